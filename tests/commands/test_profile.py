"""``curvext profile`` end to end on digits with a small saved model: table, plot, resume."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from curvext import data
from curvext.cli import main
from curvext.data import zoo
from curvext.geometry.profiles import principal_curvatures

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit deprecation notices


def small_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = zoo.build("lenet", "smooth", "digits").eval()  # random weights: no training in tests
    path = tmp_path / "lenet.pt"
    torch.jit.save(torch.jit.trace(model, torch.rand(2, 1, 8, 8)), str(path))
    return model, path


def test_profile_writes_table_and_plot_and_resumes(tmp_path):
    model, ckpt = small_checkpoint(tmp_path)
    out = tmp_path / "prof"
    args = ["profile", "--checkpoint", str(ckpt), "--images", "6", "--k", "3", "--chunk", "4",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    table = pd.read_parquet(out / "profile.parquet")
    assert len(table) == 6 * 6 and set(table["rank"]) == set(range(6))
    assert (out / "profile.png").stat().st_size > 0
    # Each image's values are ascending (k most negative, then k most positive).
    for _, g in table.groupby("image"):
        assert g.sort_values("rank")["curvature"].is_monotonic_increasing
    # The Lanczos ends in the table match the ends of the dense spectrum (an independent path).
    x = data.load_digits("test").images[:6]
    dense = principal_curvatures(model, x, at="boundary", full=True).values.double()
    want = torch.cat([dense[:, :3], dense[:, -3:]], 1)
    got = torch.tensor(table.sort_values(["image", "rank"])["curvature"].to_numpy()).reshape(6, 6)
    scale = dense.abs().amax(1, keepdim=True)
    assert float(((got - want) / scale).abs().max()) < 1e-3
    # A rerun reuses the saved parts (modification times unchanged).
    parts = sorted((out / "parts").rglob("*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in parts]
    assert main(args) == 0
    assert [p.stat().st_mtime_ns for p in parts] == stamps


def test_profile_csv_full_spectrum(tmp_path):
    _, ckpt = small_checkpoint(tmp_path)
    out = tmp_path / "full"
    assert main(["profile", "--checkpoint", str(ckpt), "--images", "2", "--full", "--format", "csv",
                 "--out", str(out), "--no-progress"]) == 0
    table = pd.read_csv(out / "profile.csv")
    assert len(table) == 2 * 63  # d = 64 minus the normal direction
    assert (out / "profile.png").stat().st_size > 0


def test_profile_parts_belong_to_their_model(tmp_path):
    """Another checkpoint with the same architecture in the same folder gets its own parts."""
    _, ckpt = small_checkpoint(tmp_path)
    torch.manual_seed(1)
    other = zoo.build("lenet", "smooth", "digits").eval()
    ckpt2 = tmp_path / "other.pt"
    torch.jit.save(torch.jit.trace(other, torch.rand(2, 1, 8, 8)), str(ckpt2))
    out = tmp_path / "prof"
    common = ["--images", "3", "--k", "2", "--out", str(out), "--no-progress"]
    assert main(["profile", "--checkpoint", str(ckpt)] + common) == 0
    first = pd.read_parquet(out / "profile.parquet")
    assert main(["profile", "--checkpoint", str(ckpt2)] + common) == 0
    second = pd.read_parquet(out / "profile.parquet")
    assert len(list((out / "parts").rglob("*.parquet"))) == 2
    assert not first["curvature"].equals(second["curvature"])


def test_profile_shards_merge_into_the_unsharded_table(tmp_path, capsys):
    _, ckpt = small_checkpoint(tmp_path)
    common = ["profile", "--checkpoint", str(ckpt), "--images", "5", "--k", "2", "--chunk", "2", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "sharded"
    assert main(common + ["--out", str(out), "--shard", "1/2"]) == 0  # chunk 1 of 0, 1, 2
    assert "still missing" in capsys.readouterr().out
    assert len(list((out / "parts").rglob("*.parquet"))) == 1 and not (out / "profile.parquet").exists()
    assert main(common + ["--out", str(out), "--shard", "0/2"]) == 0  # chunks 0 and 2: the last shard merges
    whole = pd.read_parquet(tmp_path / "whole" / "profile.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(out / "profile.parquet"), whole)


def test_profile_shard_defaults_to_torchrun_rank(tmp_path, monkeypatch):
    _, ckpt = small_checkpoint(tmp_path)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    out = tmp_path / "rank2"
    assert main(["profile", "--checkpoint", str(ckpt), "--images", "4", "--k", "2", "--chunk", "1",
                 "--out", str(out), "--no-progress"]) == 0
    assert [p.name for p in (out / "parts").rglob("*.parquet")] == ["part-000002.parquet"]


@pytest.mark.parametrize("bad", ["3/3", "-1/2", "1", "a/b", "0/0"])
def test_profile_rejects_bad_shards(bad, capsys):
    with pytest.raises(SystemExit):
        main(["profile", f"--shard={bad}"])  # the = form: argparse would take "-1/2" for an option
    assert "expected I/N" in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [("--chunk", "0"), ("--images", "-3"), ("--k", "x"), ("--h", "-1"),
                                           ("--h", "nan"), ("--image-size", "0")])
def test_profile_rejects_bad_numbers_before_any_work(option, value, capsys):
    with pytest.raises(SystemExit):
        main(["profile", option, value])
    assert option in capsys.readouterr().err


def test_profile_keeps_going_past_an_image_without_a_boundary(tmp_path, deepfool_fails_on, capsys):
    _, ckpt = small_checkpoint(tmp_path)
    deepfool_fails_on(0)
    out = tmp_path / "prof"
    assert main(["profile", "--checkpoint", str(ckpt), "--images", "3", "--k", "2", "--out", str(out),
                 "--no-progress"]) == 0
    assert "1 without a boundary to measure" in capsys.readouterr().out
    table = pd.read_parquet(out / "profile.parquet")
    assert table[table["image"] == 0]["curvature"].isna().all()
    assert table[table["image"] != 0]["curvature"].notna().all()
    assert (out / "profile.png").stat().st_size > 0


def test_profile_on_an_image_folder(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    _, ckpt = small_checkpoint(tmp_path)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(data.load_digits("test").images[:3]):
        Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "prof"
    assert main(["profile", "--dataset", "folder", "--data-dir", str(folder), "--checkpoint", str(ckpt),
                 "--image-size", "8", "--channels", "1", "--normalize", "0/1", "--k", "2", "--out", str(out),
                 "--no-progress"]) == 0
    table = pd.read_parquet(out / "profile.parquet")
    assert sorted(table["image"].unique()) == [0, 1, 2] and table["curvature"].notna().all()
    assert main(["profile", "--dataset", "folder", "--data-dir", str(folder)]) == 2
    assert "--dataset folder needs --checkpoint" in capsys.readouterr().err


def test_profile_of_an_exported_program_behind_normalize(tmp_path, capsys):
    """A torch.export .pt2 checkpoint (whose module refuses eval()) through --normalize: the same
    curvatures as the eager model it was exported from."""
    torch.manual_seed(0)
    model = zoo.build("lenet", "smooth", "digits").eval()

    class ExpectsNormalised(torch.nn.Module):  # the user's model takes (x - 0.5) / 0.25
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, z):
            return self.model(z * 0.25 + 0.5)

    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(ExpectsNormalised().eval(), (torch.rand(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    path = tmp_path / "user.pt2"
    torch.export.save(program, str(path))
    out = tmp_path / "prof"
    assert main(["profile", "--checkpoint", str(path), "--normalize", "0.5/0.25", "--images", "3", "--k", "2",
                 "--out", str(out), "--no-progress"]) == 0
    table = pd.read_parquet(out / "profile.parquet")
    eager = principal_curvatures(model, data.load_digits("test").images[:3], k=2).values.double()
    got = torch.tensor(table.sort_values(["image", "rank"])["curvature"].to_numpy()).reshape(3, 4)
    torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-6)
    assert main(["profile", "--normalize", "imagenet"]) == 2
    assert "--normalize applies to a --checkpoint" in capsys.readouterr().err
