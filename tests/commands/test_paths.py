"""``curvext paths`` end to end on digits (zoo LeNet, a few pairs, small caps): table, plot,
printed summary, resume after a killed run, bad flags."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

import curvext.commands.paths as paths_command
from curvext import data
from curvext.cli import main
from curvext.data import zoo
from curvext.geometry.paths import find_paths

SMALL = ["--pairs", "3", "--images", "60", "--samples", "7", "--max-depth", "2", "--pgd-steps", "5",
         "--chunk", "2", "--plot-paths", "2", "--no-progress"]


def test_paths_writes_table_plot_and_summary(tmp_path, capsys):
    out = tmp_path / "paths"
    assert main(["paths", "--out", str(out)] + SMALL) == 0
    printed = capsys.readouterr().out
    table = pd.read_parquet(out / "paths.parquet")
    assert list(table.columns) == list(paths_command.COLUMNS)
    assert table.groupby("kind").size().to_dict() == {"natural": 3, "adversarial": 3, "noise": 3}
    assert (out / "paths.png").stat().st_size > 0
    for kind in ("natural", "adversarial", "noise"):
        assert f"| {kind} | 3 |" in printed
    assert "| kind | pairs | connected |" in printed
    # The pairs are what their kind says, by the model's own labels.
    model = zoo.train("lenet", "relu", "digits").model
    images = data.load_digits("test").subset(60)
    with torch.no_grad():
        pred = model(images.images).argmax(1).numpy()
    nat = table[table["kind"] == "natural"]
    assert (pred[nat["source1"].to_numpy()] == nat["label"].to_numpy()).all()
    assert (pred[nat["source2"].to_numpy()] == nat["label"].to_numpy()).all()
    assert (images.labels.numpy()[nat["source1"].to_numpy()] == nat["label"].to_numpy()).all()  # correct
    adv = table[table["kind"] == "adversarial"]  # the attacked clean image had another label
    assert (pred[adv["source2"].to_numpy()] != adv["label"].to_numpy()).all()
    assert (table[table["kind"] == "noise"]["source2"] == -1).all()
    # The rows are find_paths' results on the saved pairs (a separate call here).
    (pairs_file,) = (out / "pairs").glob("adversarial-*.pt")
    pairs = torch.load(pairs_file, weights_only=True)
    res = find_paths(model, pairs["x1"], pairs["x2"], samples_per_segment=7, max_depth=2)
    assert adv["connected"].tolist() == res.connected.tolist()
    assert adv["anchors"].tolist() == res.n_anchors.tolist()
    torch.testing.assert_close(torch.tensor(adv["length_ratio"].to_numpy()), res.length_ratio)
    # The parts hold each pair's vertices, one pair after another.
    parts = sorted((out / "parts").glob("adversarial-*.pt"))
    vertices = torch.cat([torch.load(p, weights_only=True)["vertices"] for p in parts])
    assert torch.equal(vertices, torch.cat([res.vertices[i, :c] for i, c in enumerate(res.counts.tolist())]))
    # Connected pairs have no failure text; the others name their reason, and pairs stopped at
    # the depth cap get a note on what to try.
    assert ((table["failure"] == "") == table["connected"]).all()
    capped = int(table["failure"].str.startswith("depth cap").sum())
    assert (f"{capped} pair(s) stopped at the depth cap 2" in printed) == (capped > 0)


def test_paths_resumes_after_a_killed_run(tmp_path, monkeypatch):
    out = tmp_path / "paths"
    args = ["paths", "--kinds", "natural,noise", "--out", str(out)] + SMALL
    calls = []

    def killed_on_the_third_part(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return find_paths(*a, **k)

    monkeypatch.setattr(paths_command, "find_paths", killed_on_the_third_part)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    done = sorted((out / "parts").iterdir())
    assert len(done) == 2 and not (out / "paths.parquet").exists()  # whole parts only, no table
    stamps = [p.stat().st_mtime_ns for p in done]
    monkeypatch.undo()
    calls.clear()
    monkeypatch.setattr(paths_command, "find_paths", lambda *a, **k: calls.append(1) or find_paths(*a, **k))
    assert main(args) == 0
    assert len(calls) == 2  # only the two missing parts (3 pairs in chunks of 2, two kinds)
    assert [p.stat().st_mtime_ns for p in done] == stamps
    resumed = pd.read_parquet(out / "paths.parquet")
    assert main(["paths", "--kinds", "natural,noise", "--out", str(tmp_path / "fresh")] + SMALL) == 0
    pd.testing.assert_frame_equal(resumed, pd.read_parquet(tmp_path / "fresh" / "paths.parquet"))
    # Another anchor overshoot: the same pairs (noise pushed by --noise-overshoot), new parts.
    assert main(args + ["--overshoot", "0.02"]) == 0
    assert len(list((out / "pairs").iterdir())) == 2 and len(list((out / "parts").iterdir())) == 8


@pytest.mark.parametrize("option, value", [("--kinds", "natural,foo"), ("--kinds", "noise,noise"),
                                           ("--max-depth", "-1"), ("--samples", "0"), ("--overshoot", "-1"),
                                           ("--pairs", "x"), ("--eps", "0")])
def test_paths_rejects_bad_values_in_one_line_naming_the_flag(option, value, capsys):
    with pytest.raises(SystemExit):
        main(["paths", f"{option}={value}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert option in err[-1] and "expected" in err[-1]


def test_paths_needs_a_data_dir_for_mnist(tmp_path, capsys):
    assert main(["paths", "--dataset", "mnist", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--dataset mnist needs --data-dir (a folder of IDX files)" in err


def test_summary_rows():
    table = pd.DataFrame(dict(kind=["natural"] * 4, connected=[True, True, True, False], anchors=[0, 0, 3, 5],
                              pushed=[0, 0, 2, 5], depth=[0, 0, 2, 4], max_deviation=[0.0, 0.0, 0.3, 0.5],
                              length_ratio=[1.0, 1.0, 1.5, 2.0],
                              failure=["", "", "", "depth cap 4 reached: ..."]))
    lines = paths_command.summary(table, ("natural", "noise")).splitlines()
    # Anchors, depth, deviation and length over the three connected pairs; "straight" counts the
    # connected pairs without anchors, out of all four.
    assert lines[2] == ("| natural | 4 | 75% | 50% | 1.00 / 0 / 3 | 0.67 | 2 | 0.000 / 0.300 | 1.000 / 1.500 "
                        "| depth cap: 1 |")
    assert lines[3] == "| noise | 0 | | | | | | | | |"
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_plot_choice_prefers_paths_with_anchors():
    rows = [(0, True, 0), (1, False, 4), (2, True, 2), (3, True, 5), (4, True, 0), (5, False, 0)]
    assert paths_command.plot_choice(rows, 3) == [3, 2, 1]
    assert paths_command.plot_choice(rows, 10) == [3, 2, 1, 5, 0, 4]
    assert paths_command.plot_choice(rows, 0) == []


def test_a_pair_whose_ends_tie_is_reported_not_fatal(tmp_path, monkeypatch, capsys):
    """A pair whose two ends get different labels in the command's batches (an end within
    rounding of the boundary) is a row with the failure "labels differ"; the others are searched."""
    real = paths_command._labels_as_find_paths_sees_them

    def tie_first(model, x1, x2, batch_size):
        l1, l2 = real(model, x1, x2, batch_size)
        l2 = l2.clone()
        l2[0] = (l1[0] + 1) % 10
        return l1, l2

    monkeypatch.setattr(paths_command, "_labels_as_find_paths_sees_them", tie_first)
    out = tmp_path / "paths"
    assert main(["paths", "--kinds", "natural", "--out", str(out)] + SMALL) == 0
    table = pd.read_parquet(out / "paths.parquet")
    assert table["failure"].str.startswith("labels differ").tolist() == [True, False, True]  # chunks of 2
    assert table["connected"].tolist() == [False, True, False]
    assert "labels differ: 2" in capsys.readouterr().out
