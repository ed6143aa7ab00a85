"""curvext.cli: version, threads, help defaults, and one-line errors."""
from __future__ import annotations

import pytest
import torch

from curvext import __version__
from curvext.cli import build_parser, default_threads, main
from tests.conftest import one_line_error


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and f"curvext {__version__}" in capsys.readouterr().out


def test_threads_are_shared_among_torchrun_processes_and_can_be_set(monkeypatch, tmp_path):
    before = torch.get_num_threads()
    try:
        assert default_threads({"LOCAL_WORLD_SIZE": "64"}) == 1
        assert 1 <= default_threads({}) <= before
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert main(["--threads", "1", "calibrate", "--data-dir", str(tmp_path),
                     "--out", str(tmp_path / "c.json")]) == 2  # no model given; threads are set before the command runs
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit) as exit_info:
        main(["--threads", "0", "profile"])
    assert exit_info.value.code == 2


def test_help_shows_defaults():
    commands = build_parser()._subparsers._group_actions[0].choices
    assert "(default: auto)" in commands["calibrate"].format_help()  # --device, whose help text omits it
    assert "(default: 300)" in commands["evaluate"].format_help()  # --images


@pytest.mark.parametrize("argv, expected", [
    (["evaluate", "--checkpoint", "{tmp}/missing.pt"], "argument --checkpoint: expected an existing file"),
    (["evaluate", "--dataset", "folder", "--data-dir", "{tmp}/nowhere"], "argument --data-dir: expected an existing"),
    (["detect", "--data-dir", "{tmp}", "--calibration", "{tmp}", "--out", "{tmp}/o", "--model", "lenet"],
     "argument --calibration: expected an existing file, got"),
    (["evaluate", "--model", "resnet"], "argument --model: expected lenet, nin (the zoo) or torchvision:NAME"),
    (["profile", "--model", "vgg"], "argument --model: expected lenet, nin"),
    (["evaluate", "--activation", "gelu"], "argument --activation: expected relu, smooth or both"),
    (["evaluate", "--checkpoint", "{tmp}/file", "--module-path", "no_such_package.models:Net"],
     "--module-path 'no_such_package.models:Net' cannot be imported"),
    (["evaluate", "--checkpoint", "{tmp}/file", "--module-path", "resnet50"], "--module-path must look like"),
    (["profile", "--out", "{tmp}/file"], "argument --out: expected a folder to write into"),
    (["evaluate", "--images", "two"], "argument --images: expected a positive integer"),
    (["evaluate", "--model-kwargs", "num_classes=10"], "argument --model-kwargs: expected a JSON object"),
    (["evaluate", "--dataset", "mnist"], "--dataset mnist needs --data-dir"),
    (["evaluate", "--dataset", "folder", "--data-dir", "{tmp}"], "--dataset folder needs --checkpoint"),
    (["evaluat"], "invalid choice: 'evaluat'"),
])
def test_command_line_mistakes_are_one_line_naming_the_option(argv, expected, tmp_path, capsys):
    (tmp_path / "file").write_bytes(b"not a checkpoint")
    err = one_line_error([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert expected in err


def test_a_library_parameter_in_an_error_is_named_as_the_option(relu_lenet, tmp_path, capsys):
    """The probe flips no image at a tiny radius: the library's error names ``probe_eps``, the
    command line user reads ``--probe-eps``."""
    err = one_line_error(["evaluate", "--checkpoint", str(relu_lenet[1]), "--images", "4", "--calibration-images", "4",
                           "--probe-eps", "1e-6", "--attacks", "deepfool", "--out", str(tmp_path), "--no-progress"],
                          capsys)
    assert "--probe-eps" in err and "probe_eps" not in err


def test_parameter_names_are_rewritten_as_words_only():
    from curvext.cli import _command_parser, _with_flags

    evaluate = _command_parser(build_parser(), "evaluate")
    message = "pass a larger probe_eps, or image_size"
    assert _with_flags(message, evaluate) == "pass a larger --probe-eps, or --image-size"
    path = "checkpoint /home/u/data_dir/runs/image_size.pth and C:\\data_dir\\x"
    assert _with_flags(path, evaluate) == path  # pieces of paths stay as they are


def test_paths_starting_with_a_tilde_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "mnist").mkdir()
    args = build_parser().parse_args(["evaluate", "--dataset", "mnist", "--data-dir", "~/mnist", "--out", "~/o"])
    assert args.data_dir == str(tmp_path / "mnist") and args.out == str(tmp_path / "o")
