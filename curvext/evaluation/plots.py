"""Figures (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import numpy as np

from curvext.utils.optional import optional_import


def _pyplot():
    optional_import("matplotlib").use("Agg")
    return optional_import("matplotlib.pyplot")


def roc_curves(report, path) -> None:
    """ROC of curvext's oriented rho for every attack (clean = negatives)."""
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    sign = 1.0 if report.orientation == "higher" else -1.0
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, rho_p in report.rho_perturbed.items():
        y = np.r_[np.zeros(len(report.rho_clean)), np.ones(len(rho_p))]
        fpr, tpr, _ = roc_curve(y, sign * np.r_[report.rho_clean, rho_p])
        auc = next((r.auc for r in report.rows if r.attack == name and r.score == "curvext"), float("nan"))
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false-positive rate (clean flagged)")
    ax.set_ylabel("true-positive rate (perturbed flagged)")
    ax.set_title(f"curvext rho, perturbed expected {report.orientation}")
    ax.legend(loc="lower right", fontsize=8)
    _save(plt, fig, path)


def _save(plt, fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _threshold_line(ax, threshold: float, orientation: str) -> None:
    """The calibrated threshold as a black line, the flagged side (``orientation`` "higher":
    right of it) shaded."""
    ax.axvline(threshold, color="k", lw=1.5, label=f"threshold {threshold:.3g}")
    left, right = ax.get_xlim()
    if orientation == "higher":
        ax.axvspan(threshold, right, color="tab:red", alpha=0.07)
    else:
        ax.axvspan(left, threshold, color="tab:red", alpha=0.07)
    ax.set_xlim(left, right)


def rho_histogram(report, path) -> None:
    """Histogram of rho for the clean images (filled grey) and each attack's perturbed images
    (outlines, each in its own colour and dash), with curvext's calibrated threshold as a black line
    and the side it flags shaded; titled with the model and dataset of ``report.settings``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    threshold = getattr(report, "threshold", None)
    everything = np.concatenate([report.rho_clean] + list(report.rho_perturbed.values())
                                + ([] if threshold is None else [np.array([threshold])]))
    lo, hi = np.percentile(everything, [1, 99])
    span = max(hi - lo, 1e-12)
    bins = np.linspace(lo - 0.05 * span, hi + 0.05 * span, 50)
    clip = lambda v: np.clip(v, bins[0], bins[-1])  # noqa: E731 - the 1% tails land in the end bins
    ax.hist(clip(report.rho_clean), bins=bins, density=True, color="0.75", label=f"clean ({len(report.rho_clean)})")
    dashes = ("-", "--", "-.", ":")
    for n, (name, rho_p) in enumerate(report.rho_perturbed.items()):
        ax.hist(clip(rho_p), bins=bins, density=True, histtype="step", lw=1.6, color=f"C{n % 10}",
                linestyle=dashes[(n // 10 + n) % len(dashes)], label=f"{name} ({len(rho_p)})")
    if threshold is not None:
        _threshold_line(ax, threshold, report.orientation)
    model, dataset = report.settings.get("model"), report.settings.get("dataset")
    where = f": {model} on {dataset}" if model and dataset else ""
    ax.set_title(f"rho of clean and adversarial images{where}")
    ax.set_xlabel("rho (mean normal curvature of f_i - f_khat)" + ("; shaded: flagged" if threshold is not None
                                                                   else ""))
    ax.set_ylabel("density")
    ax.legend(fontsize=7, ncol=2)
    _save(plt, fig, path)


def curvature_profile(values: np.ndarray, path, title: str = "principal curvatures",
                      spectrum_size: int | None = None) -> None:
    """Sorted principal curvatures (the paper's Fig. 5b): median over images, with the
    interquartile band, against the rank of the value. ``values``: ``(N, m)`` ascending rows.

    When the rows hold only the k lowest and k highest of ``spectrum_size`` curvatures (Lanczos
    from both ends, ``m = 2k < spectrum_size``), the two ends are drawn at their ranks in the whole
    spectrum, as two pieces with the unmeasured middle left empty (no line across it)."""
    plt = _pyplot()
    values = np.sort(np.asarray(values, dtype=float), axis=1)
    m = values.shape[1]
    q1, med, q3 = np.nanpercentile(values, [25, 50, 75], axis=0)
    pieces = [(np.arange(m), slice(0, m))]
    if spectrum_size is not None and m % 2 == 0 and m < spectrum_size:
        k = m // 2
        pieces = [(np.arange(k), slice(0, k)), (np.arange(spectrum_size - k, spectrum_size), slice(k, m))]
    fig, ax = plt.subplots(figsize=(6, 4))
    for n, (rank, part) in enumerate(pieces):
        ax.fill_between(rank, q1[part], q3[part], alpha=0.3, color="C0", label="25-75%" if n == 0 else None)
        ax.plot(rank, med[part], lw=1.5, color="C0", marker="." if len(rank) < 40 else None,
                label=f"median over {values.shape[0]} images" if n == 0 else None)
    if len(pieces) == 2:
        ax.axvspan(pieces[0][0][-1] + 0.5, pieces[1][0][0] - 0.5, color="gray", alpha=0.08,
                   label=f"{spectrum_size - m} curvatures not computed")
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_xlabel("rank of the principal curvature (ascending)")
    ax.set_ylabel("principal curvature")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def rho_against_threshold(rho: np.ndarray, threshold: float, orientation: str, path,
                          title: str = "rho of the swept images") -> None:
    """Histogram of the swept images' rho ``(N,)`` with the calibrated threshold as a vertical
    line; the flagged side (``orientation`` "higher": right of it) is shaded."""
    plt = _pyplot()
    rho = np.asarray(rho, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    if rho.size:
        lo, hi = np.percentile(np.append(rho, threshold), [0.5, 99.5])
        span = max(hi - lo, 1e-12)
        bins = np.linspace(lo - 0.05 * span, hi + 0.05 * span, 60)
        ax.hist(np.clip(rho, bins[0], bins[-1]), bins=bins, color="tab:blue", label=f"{rho.size} images")
    _threshold_line(ax, threshold, orientation)
    ax.set_xlabel("rho (mean normal curvature of f_i - f_khat); shaded: flagged as perturbed")
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def path_margins(panels: dict, path, title: str = "label margin along paths (Algorithm 1)") -> None:
    """Label margin ``f_c - max_{j != c} f_j`` along paths between two points of class c, one
    panel per kind of pair: the path found (solid, > 0 wherever it stays in the class) and the
    straight segment between the same two points (dotted, same colour).

    ``panels``: ``{kind: [(name, pos, margin, straight_pos, straight_margin), ...]}``, a legend
    name and 1-D arrays; positions are fractions of each curve's length in ``[0, 1]``."""
    plt = _pyplot()
    kinds = list(panels)
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(4.5 * max(len(kinds), 1), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for n, (name, pos, margin, spos, smargin) in enumerate(panels[kind]):
            color = f"C{n % 10}"
            ax.plot(np.asarray(pos), np.asarray(margin), color=color, lw=1.3, label=f"{name}: path")
            ax.plot(np.asarray(spos), np.asarray(smargin), color=color, lw=1.0, ls=":", label=f"{name}: straight")
        ax.axhline(0.0, color="gray", lw=0.8)
        ax.set_xlabel("position along the curve (fraction of its length)")
        ax.set_title(kind)
        if panels[kind]:
            ax.legend(fontsize=7)
    axes[0][0].set_ylabel(r"$f_c - \max_{j \neq c} f_j$")
    fig.suptitle(title)
    _save(plt, fig, path)
