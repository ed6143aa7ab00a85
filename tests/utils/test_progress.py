"""curvext.utils.progress: bars only where the process or the caller asks for them."""
from __future__ import annotations

import pytest

from curvext.utils import progress


def test_bars_are_silent_unless_shown(capsys):
    assert not progress.show_progress(False)  # off by default in a library process
    bar = progress.progress_bar(range(3), desc="silent")
    assert list(bar) == [0, 1, 2] and not hasattr(bar, "n")
    bar.update(2)
    bar.set_postfix_str("x")
    bar.close()
    assert capsys.readouterr().err == ""


@pytest.fixture
def terminal(capsys, monkeypatch):
    """stderr captured, and seen by the bars as a terminal (inner bars draw only on one)."""
    monkeypatch.setattr(progress, "_on_terminal", lambda: True)
    return capsys


def test_shown_for_a_block_and_restored(terminal):
    capsys = terminal
    with progress.progress_shown(True):
        bar = progress.progress_bar(total=4, desc="phase", unit="img")
        bar.update(4)
        assert bar.n == 4  # a tqdm bar
        bar.close()
    assert "phase" in capsys.readouterr().err
    assert isinstance(progress.progress_bar(total=1), progress._Silent)  # back to the default
    bar = progress.progress_bar(total=1, enabled=True, desc="caller")
    assert not isinstance(bar, progress._Silent)
    bar.close()


def test_inner_bars_are_silent_under_an_outer_bar_and_off_a_terminal(terminal, monkeypatch):
    with progress.progress_shown(True):
        with progress.progress_bar(total=2, desc="outer", enabled=True):
            assert isinstance(progress.progress_bar(total=1, leave=False), progress._Silent)
        assert not isinstance(progress.progress_bar(total=1, leave=False), progress._Silent)  # closed
        with pytest.raises(RuntimeError):  # an error closes the outer bar too
            with progress.progress_bar(total=2, desc="outer", enabled=True):
                raise RuntimeError
        inner = progress.progress_bar(total=1, leave=False)
        assert not isinstance(inner, progress._Silent)
        inner.close()
        monkeypatch.setattr(progress, "_on_terminal", lambda: False)  # a log file, a pipe
        assert isinstance(progress.progress_bar(total=1, leave=False), progress._Silent)


def test_long_phases_have_bars(tmp_path, terminal):
    """Training a zoo model, the calibration probe, the scale choice and grouped scoring each draw
    a bar when bars are shown (the command line's default)."""
    from curvext.data import load_digits, zoo
    from curvext.detection.detector import CurvatureDetector

    with progress.progress_shown(True):
        model = zoo.train("lenet", "relu", "digits", epochs=1, cache=tmp_path).model
        x = load_digits("test").images[:6]
        det = CurvatureDetector(model, num_directions=2, method="fd2", batch_size=4)
        det.choose_scale(x, (0.05, 0.1))
    err = terminal.readouterr().err
    for phase in ("training lenet-relu on digits", "calibration probe", "scale h", "curvature"):
        assert phase in err, phase
