"""The examples run at toy sizes and print the table their docstring promises."""
from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import load_script

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    return load_script(EXAMPLES, name)


def test_robust_training_example_runs_on_digits(tmp_path, capsys):
    out = tmp_path / "robust.md"
    assert load("robust_training").main(["--epochs", "1", "--images", "12", "--activation", "relu", "--lam", "0,4",
                                         "--quiet", "--out", str(out)]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    rows = re.findall(r"^\| LeNet relu \| (\d+) \|(.*)\|$", text, flags=re.M)
    assert [lam for lam, _ in rows] == ["0", "4"]
    for _, cells in rows:
        accuracy, deepfool, *_ = (c.strip() for c in cells.split("|"))
        assert 0 < float(accuracy) <= 1 and float(deepfool) > 0
    # The penalty changed the weights: the two models differ in at least one measured number.
    assert rows[0][1] != rows[1][1]
