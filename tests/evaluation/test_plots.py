"""curvext.evaluation.plots: figures are written as PNG images of the expected size."""
from __future__ import annotations

import numpy as np

from curvext.evaluation import plots


def test_path_margins_one_panel_per_kind(tmp_path):
    mpimg = __import__("matplotlib.image", fromlist=["imread"])
    pos = np.linspace(0, 1, 20)
    curve = ("pair 0", pos, 1 - pos, pos, np.cos(3 * pos))
    path = tmp_path / "m.png"
    plots.path_margins({"natural": [curve, curve], "noise": [curve], "adversarial": []}, path)
    height, width, _ = mpimg.imread(path).shape
    # figsize (4.5 * panels, 3.6) inches at 120 dpi: three panels side by side.
    assert (height, width) == (432, 1620)
    plots.path_margins({"natural": [curve]}, path)
    assert mpimg.imread(path).shape[:2] == (432, 540)
