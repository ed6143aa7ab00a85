"""`curvext evaluate`: attack rows, the calibration split, recovery rules, feature-squeezing
settings and IDX datasets under their own names (small digits runs)."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from curvext import data
from curvext.adversarial.squeezers import Squeezer
from curvext.cli import main
from curvext.commands.evaluate import attack_list, squeezer_setting
from tests.conftest import one_line_error

FAST = ["--directions", "2", "--h", "0.1", "--no-progress"]


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory):
    """One zoo cache for the module: the digits LeNet is trained once."""
    return str(tmp_path_factory.mktemp("zoo"))


def test_attacks_choose_the_rows(tmp_path, monkeypatch, capsys, zoo_cache):
    monkeypatch.setenv("CURVEXT_CACHE", zoo_cache)
    args = ["evaluate", "--images", "20", "--calibration-images", "20", "--attacks", "deepfool,adaptive-best-of-r",
            "--restarts", "2", "--pgd-steps", "5", "--out", str(tmp_path / "out"), *FAST]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| deepfool |" in out and "| adaptive-best-of-r |" in out
    for absent in ("| pgd-linf |", "| pgd-l2 |", "| cw-l2-k5 |", "| adaptive-pgd |", "| adaptive-pgd-all |"):
        assert absent not in out
    # every score, the combined column, and each rule's recovery
    assert "| curvext | max-softmax | logit margin | noise consistency | feature squeezing | combined |" in out
    assert "if flagged: max | min | max-top2 | min-top2 | runner-up |" in out
    assert "calibrated on 20 clean calibration images disjoint from the" in out
    assert "feature squeezing 1-bit depth, 2x2 median (the digits setting of Xu et al.)" in out
    assert "recovery by max curvature (the calibration probe suggests" in out


def test_recovery_rule_and_in_sample_calibration(tmp_path, monkeypatch, capsys, zoo_cache):
    monkeypatch.setenv("CURVEXT_CACHE", zoo_cache)
    args = ["evaluate", "--images", "20", "--calibration-images", "0", "--attacks", "deepfool", "--recovery",
            "min-top2", "--squeeze", "3,0", "--out", str(tmp_path / "out"), *FAST]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "evaluated clean images themselves" in out and "recovery by min-top2 curvature" in out
    assert "feature squeezing 3-bit depth (--squeeze)" in out


def test_parsers_of_the_new_options():
    assert attack_list("cw, adaptive-pgd") == ("cw", "adaptive-pgd")
    assert squeezer_setting("auto") == "auto"
    assert squeezer_setting("5,2,13-3-2") == Squeezer(5, 2, (13, 3, 2.0))
    assert squeezer_setting("4") == Squeezer(4, 2, None)


@pytest.mark.parametrize("option, bad", [("--attacks", "pgd"), ("--attacks", ""), ("--squeeze", "0"),
                                         ("--squeeze", "5,2,13-3"), ("--calibration-images", "-1"),
                                         ("--recovery", "largest"), ("--dataset", "../x"), ("--restarts", "0"),
                                         ("--adaptive-h", "0"), ("--adaptive-h", "-0.1"), ("--adaptive-h", "nan")])
def test_bad_values_are_refused_by_option(option, bad, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", option, bad])
    assert option in capsys.readouterr().err


def test_adaptive_h_reaches_the_attack_and_its_cache_key(tmp_path, monkeypatch, capsys, zoo_cache):
    """--adaptive-h is the scale the adaptive PGD differentiates rho at; a run with the detector's
    own h on the same cache folder attacks again instead of reusing the other scale's images."""
    from curvext.evaluation import suite

    monkeypatch.setenv("CURVEXT_CACHE", zoo_cache)
    scales = []
    real = suite.differentiable_curvature
    monkeypatch.setattr(suite, "differentiable_curvature",
                        lambda m, x, V, method, h, *a, **k: scales.append(h) or real(m, x, V, method, h, *a, **k))
    args = ["evaluate", "--images", "20", "--calibration-images", "20", "--attacks", "adaptive-pgd", "--pgd-steps",
            "2", "--adaptive-images", "4", "--out", str(tmp_path / "out"), *FAST]
    assert main([*args, "--adaptive-h", "0.3"]) == 0
    assert scales and set(scales) == {0.3}
    assert "adaptive attack adaptive-pgd: PGD l2 eps 1, 2 steps" in capsys.readouterr().out
    assert "rho at h = 0.3 (the detector's: 0.1)" in (tmp_path / "out" / "eval-digits-lenet-relu.md").read_text()
    scales.clear()
    assert main(args) == 0
    assert scales and set(scales) == {0.1}  # not served from the 0.3 run's cache
    assert "rho at the detector's h = 0.1" in capsys.readouterr().out
    capsys.readouterr()
    assert "argument --adaptive-h: expected a positive finite number, got '-1'" in one_line_error(
        [*args, "--adaptive-h", "-1"], capsys)


def _write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    raw = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(raw)


def test_an_idx_dataset_under_its_own_name(tmp_path, monkeypatch, capsys):
    """sklearn's digits written as IDX files and named "tiny-fashion": the zoo trains on them
    under that name, the report says so, and feature squeezing takes the greyscale setting."""
    folder = tmp_path / "idx"
    folder.mkdir()
    for split, stem in (("train", "train"), ("test", "t10k")):
        ds = data.load_digits(split)
        _write_idx(folder / f"{stem}-images-idx3-ubyte.gz", (ds.images[:, 0].numpy() * 255).round())
        _write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", ds.labels.numpy())
    monkeypatch.setenv("CURVEXT_CACHE", str(tmp_path / "zoo"))
    args = ["evaluate", "--dataset", "tiny-fashion", "--data-dir", str(folder), "--images", "20",
            "--calibration-images", "20", "--attacks", "deepfool", "--out", str(tmp_path / "out"), *FAST]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "## lenet-relu on tiny-fashion" in out and "mnist" not in out
    assert "feature squeezing 5-bit depth, 2x2 median (the greyscale setting)" in out
    assert (tmp_path / "out" / "eval-tiny-fashion-lenet-relu.md").is_file()
    cached = sorted(p.name for p in (tmp_path / "zoo").glob("*.pt"))
    assert len(cached) == 1 and cached[0].startswith("lenet-relu-tiny-fashion-")
    assert main(["evaluate", "--dataset", "tiny-fashion"]) == 2  # needs --data-dir
    assert "--data-dir" in capsys.readouterr().err
