"""curvext.cli: version, threads, help defaults, and one-line errors."""
from __future__ import annotations

import pytest
import torch

from curvext import __version__
from curvext.cli import build_parser, default_threads, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and f"curvext {__version__}" in capsys.readouterr().out


def test_threads_are_shared_among_torchrun_processes_and_can_be_set(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert default_threads({"LOCAL_WORLD_SIZE": "64"}) == 1
        assert 1 <= default_threads({}) <= before
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert main(["--threads", "1", "detect", "--data-dir", "nowhere", "--calibration", "none.json",
                     "--out", "x"]) == 2  # the thread count is set before the command runs
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
