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


def test_profile_ends_are_drawn_at_their_ranks_without_a_line_across_the_gap(tmp_path, monkeypatch):
    plt = plots._pyplot()
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    values = np.array([[-3.0, -1.0, 0.5, 2.0], [-2.0, -0.5, 1.0, 4.0]])  # k = 2 from each end of 63
    plots.curvature_profile(values, tmp_path / "p.png", spectrum_size=63)
    def medians(figure):  # the median curves (the zero line is grey)
        return [[int(x) for x in line.get_xdata()] for line in figure.axes[0].get_lines() if line.get_color() == "C0"]

    assert medians(figures[0]) == [[0, 1], [61, 62]]  # two pieces, at the two ends of the spectrum
    plots.curvature_profile(values, tmp_path / "q.png")  # the whole spectrum: one piece
    assert medians(figures[1]) == [[0, 1, 2, 3]]


def test_rho_histogram_has_a_title_the_threshold_and_distinguishable_attacks(tmp_path, monkeypatch):
    from types import SimpleNamespace

    plt = plots._pyplot()
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    rng = np.random.default_rng(0)
    attacks = {f"attack-{i}": rng.normal(i, 1, 50) for i in range(5)}
    report = SimpleNamespace(rho_clean=rng.normal(0, 1, 80), rho_perturbed=attacks, threshold=1.5,
                             orientation="higher", settings=dict(model="lenet-relu", dataset="mnist"))
    plots.rho_histogram(report, tmp_path / "h.png")
    ax = figures[0].axes[0]
    assert ax.get_title() == "rho of clean and adversarial images: lenet-relu on mnist"
    black = [line for line in ax.get_lines() if line.get_color() == "k"]
    assert len(black) == 1 and list(black[0].get_xdata()) == [1.5, 1.5]
    outlines = [p for p in ax.patches if not p.get_fill()]  # one step outline per attack
    styles = {(tuple(p.get_edgecolor()), p.get_linestyle()) for p in outlines}
    assert len(outlines) == len(styles) == 5
    labels = ax.get_legend_handles_labels()[1]
    assert {"threshold 1.5", "clean (80)", "attack-4 (50)"} <= set(labels)
