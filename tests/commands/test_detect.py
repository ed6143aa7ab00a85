"""``curvext calibrate`` and ``curvext detect`` end to end: the JSON calibration, the Parquet rows,
one-line errors naming the option, resumption after kill -9, and torchrun sharding."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from curvext.cli import main
from tests.conftest import one_line_error, write_digit_folder

ROOT = Path(__file__).resolve().parents[2]


def detections(out) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((Path(out) / "detections").glob("part-*.parquet"))],
                     ignore_index=True)


@pytest.fixture(scope="module")
def cli_calibration(tmp_path_factory, relu_lenet):
    """``curvext calibrate`` of the ReLU LeNet checkpoint on 30 clean digits (fd2, T = 4, h fixed)."""
    folder = write_digit_folder(tmp_path_factory.mktemp("clean") / "images", 30, offset=200)
    path = tmp_path_factory.mktemp("cal") / "cal.json"
    assert main(["calibrate", "--data-dir", str(folder), "--images", "30", "--out", str(path),
                 "--checkpoint", str(relu_lenet[1]), "--image-size", "8", "--channels", "1", "--directions", "4",
                 "--h", "0.1", "--workers", "0"]) == 0
    return path


def test_calibrate_writes_a_versioned_calibration(cli_calibration, relu_lenet):
    from curvext.utils.cache_keys import model_digest

    document = json.loads(Path(cli_calibration).read_text())
    assert document["format"] == "curvext-calibration" and document["version"] == 1
    assert document["config"]["method"] == "fd2" and document["config"]["h"] == 0.1
    assert document["config"]["num_directions"] == 4 and document["fpr"] == 0.05
    assert document["orientation"] in ("higher", "lower") and document["recovery"] in ("max", "min", "max-top2",
                                                                                        "min-top2")
    assert document["model_digest"] == model_digest(relu_lenet[0])
    assert document["preprocessing"]["image"] == {"image_size": 8, "resize": None, "channels": 1}
    assert document["curvext_version"] and document["n_images"] == 30


def test_detect_writes_rows_summary_and_histogram(tmp_path, cli_calibration, relu_lenet, digit_folder, capsys):
    out = tmp_path / "out"
    assert main(["detect", "--data-dir", str(digit_folder), "--calibration", str(cli_calibration), "--out", str(out),
                 "--checkpoint", str(relu_lenet[1]), "--no-progress", "--workers", "0"]) == 0
    assert "flag rate" in capsys.readouterr().out
    table = detections(out)
    assert len(table) == 40 and table["error"].isna().all() and (out / "rho-histogram.png").stat().st_size > 0


@pytest.mark.parametrize("args, expected", [
    (["--images", "0"], "--images: expected a positive integer"),
    (["--fpr", "1.5"], "--fpr: expected a number between 0 and 1"),
    (["--workers", "-1"], "--workers: expected an integer >= 0"),
    (["--model-kwargs", "{oops"], "--model-kwargs: expected a JSON object"),
])
def test_calibrate_rejects_bad_numbers_naming_the_option(args, expected, capsys, digit_folder):
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--data-dir", str(digit_folder), "--out", "x.json", *args])
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err


def test_user_mistakes_get_one_line(tmp_path, cli_calibration, relu_lenet, digit_folder, capsys):
    detect = ["detect", "--data-dir", str(digit_folder), "--out", str(tmp_path / "o"), "--workers", "0",
              "--no-progress"]
    assert "none.json', which does not exist" in one_line_error(
        detect + ["--calibration", str(tmp_path / "none.json"), "--checkpoint", str(relu_lenet[1])], capsys)
    assert "digest" in one_line_error(detect + ["--calibration", str(cli_calibration), "--model", "nin"], capsys)
    (tmp_path / "empty").mkdir()
    assert "no image files" in one_line_error(
        ["detect", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o2"), "--calibration",
         str(cli_calibration), "--checkpoint", str(relu_lenet[1])], capsys)
    assert "--image-size 16 differs" in one_line_error(
        detect + ["--calibration", str(cli_calibration), "--checkpoint", str(relu_lenet[1]), "--image-size", "16"],
        capsys)
    assert "which model" in one_line_error(detect + ["--calibration", str(cli_calibration)], capsys)
    (tmp_path / "file").write_text("x")
    assert "--out: expected a folder to write into" in one_line_error(
        ["detect", "--data-dir", str(digit_folder), "--out", str(tmp_path / "file"), "--calibration",
         str(cli_calibration), "--checkpoint", str(relu_lenet[1]), "--workers", "0"], capsys)
    with pytest.raises(SystemExit) as exit_info:  # argparse: a required option
        main(["detect", "--data-dir", str(digit_folder), "--out", str(tmp_path / "o3")])
    assert exit_info.value.code == 2 and "--calibration" in capsys.readouterr().err


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "curvext.cli", *args]


def child_env(threads: int = 1) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_every_image_once(tmp_path, cli_calibration, relu_lenet,
                                                                     digit_folder):
    common = ["detect", "--data-dir", str(digit_folder), "--calibration", str(cli_calibration),
              "--checkpoint", str(relu_lenet[1]), "--chunk-size", "4", "--workers", "0", "--no-progress"]
    reference = tmp_path / "reference"
    start = time.perf_counter()
    subprocess.run(cli(*common, "--out", str(reference)), env=child_env(), check=True, capture_output=True)
    duration = time.perf_counter() - start  # start-up, then 10 chunks
    out, rng, kills_with_work_done = tmp_path / "killed", random.Random(0), 0
    for _ in range(10):
        before = len(list((out / "detections").glob("part-*.parquet"))) if out.exists() else 0
        process = subprocess.Popen(cli(*common, "--out", str(out)), env=child_env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 0.9) * duration)
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills_with_work_done += len(list((out / "detections").glob("part-*.parquet"))) > before
    subprocess.run(cli(*common, "--out", str(out)), env=child_env(), check=True, capture_output=True)
    got, want = detections(out), detections(reference)
    assert kills_with_work_done >= 1  # some kills fell in the middle of the work, not all in the start-up
    assert got["path"].is_unique and len(got) == 40
    pd.testing.assert_frame_equal(got, want)


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process_row_for_row(tmp_path, cli_calibration, relu_lenet, digit_folder):
    common = ["--data-dir", str(digit_folder), "--calibration", str(cli_calibration), "--checkpoint",
              str(relu_lenet[1]), "--chunk-size", "6", "--workers", "0", "--no-progress", "--device", "cpu"]
    single = tmp_path / "single"
    subprocess.run(cli("detect", *common, "--out", str(single)), env=child_env(), check=True, capture_output=True)
    sharded = tmp_path / "sharded"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(29500 + os.getpid() % 1000), "-m", "curvext.cli", "detect", *common,
                          "--out", str(sharded)], env=child_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    pd.testing.assert_frame_equal(detections(sharded), detections(single))
    assert (sharded / "summary.md").read_text() == (single / "summary.md").read_text()
    assert run.stdout.count("flag rate") == 1  # the summary is written (and printed) once


@pytest.mark.slow
def test_two_processes_on_one_output_folder_share_the_work(tmp_path, cli_calibration, relu_lenet, digit_folder):
    common = ["detect", "--data-dir", str(digit_folder), "--calibration", str(cli_calibration),
              "--checkpoint", str(relu_lenet[1]), "--chunk-size", "4", "--workers", "0", "--no-progress"]
    reference = tmp_path / "reference"
    subprocess.run(cli(*common, "--out", str(reference)), env=child_env(), check=True, capture_output=True)
    out = tmp_path / "shared"
    both = [subprocess.Popen(cli(*common, "--out", str(out)), env=child_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate() + (p.returncode,) for p in both]
    assert all(rc in (0, 3) for *_, rc in results), results  # 3: the other still held a chunk at the end
    computed = [int(re.search(r"this process computed (\d+) parts", stdout).group(1)) for stdout, *_ in results]
    assert sum(computed) == 10  # every chunk computed by exactly one of them
    if any(rc == 3 for *_, rc in results):  # a rerun writes the summary
        subprocess.run(cli(*common, "--out", str(out)), env=child_env(), check=True, capture_output=True)
    assert len(list((out / "detections").glob("part-*.parquet"))) == 10
    pd.testing.assert_frame_equal(detections(out), detections(reference))


def test_calibrate_chooses_h_from_the_given_scales_extended_beyond_an_edge(tmp_path, relu_lenet):
    folder = write_digit_folder(tmp_path / "clean", 30, offset=300)
    path = tmp_path / "auto.json"
    assert main(["calibrate", "--data-dir", str(folder), "--images", "30", "--out", str(path), "--checkpoint",
                 str(relu_lenet[1]), "--image-size", "8", "--channels", "1", "--directions", "2",
                 "--h", "0.05,0.2", "--workers", "0"]) == 0
    document = json.loads(path.read_text())
    tried = {float(h) for h in document["scale_choice"]}
    assert {0.05, 0.2} <= tried  # the given grid, plus candidates only beyond its edges (choose_scale's extension)
    assert all(h < 0.05 or h > 0.2 for h in tried - {0.05, 0.2})
    best = max(document["scale_choice"].values())
    assert document["config"]["h"] == max(float(h) for h, s in document["scale_choice"].items() if s == best)
