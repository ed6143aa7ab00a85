"""What a finished sweep reports: ``summary.md`` and the histogram of rho against the threshold."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from curvext.evaluation import plots
from curvext.utils.atomic_files import atomic_path


def detection_summary(table) -> dict:
    """Counts and rates of a detections table (``pyarrow.Table`` with the sweep's columns):
    images, errors, scored, flagged, flag rate; with labels, the accuracy of the predicted and of
    the recovered labels over the scored labelled images (NaN without any)."""
    df = table.to_pandas()
    scored = df[df["error"].isna()]
    labelled = scored[scored["label"].notna()]
    flagged = int(scored["perturbed"].sum()) if len(scored) else 0
    return {
        "images": len(df), "errors": int(df["error"].notna().sum()), "scored": len(scored), "flagged": flagged,
        "flag_rate": flagged / len(scored) if len(scored) else float("nan"),
        "labelled": len(labelled),
        "accuracy": float((labelled["predicted"] == labelled["label"]).mean()) if len(labelled) else float("nan"),
        "accuracy_recovered": (float((labelled["recovered"] == labelled["label"]).mean())
                               if len(labelled) else float("nan")),
    }


def write_detection_summary(table, folder: Path, threshold: float, orientation: str,
                            classes: tuple = ()) -> Path:
    """``folder/summary.md`` and ``folder/rho-histogram.png`` for the detections ``table``."""
    s = detection_summary(table)
    lines = ["# curvext detect", "",
             "| images | errors | scored | flagged | flag rate |", "|---:|---:|---:|---:|---:|",
             f"| {s['images']} | {s['errors']} | {s['scored']} | {s['flagged']} | {100 * s['flag_rate']:.1f}% |", ""]
    if s["labelled"]:
        lines += [f"Labels from {len(classes)} class folders: accuracy of the model's labels "
                  f"{100 * s['accuracy']:.1f}%, after recovery of the flagged images "
                  f"{100 * s['accuracy_recovered']:.1f}% ({s['labelled']} labelled images scored).", ""]
    lines += [f"Threshold {threshold:.6g}: perturbed when rho is {orientation} "
              f"({'>=' if orientation == 'higher' else '<='} the threshold).", ""]
    df = table.to_pandas()
    errors = df[df["error"].notna()].head(10)
    if len(errors):
        lines += ["Files that could not be scored (first 10):", ""]
        lines += [f"- `{row.path}`: {row.error}" for row in errors.itertuples()] + [""]
    path = folder / "summary.md"
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines))
    rho = table.column("rho").to_numpy(zero_copy_only=False)
    rho = rho[~np.isnan(rho.astype(float))] if rho.size else rho
    with atomic_path(folder / "rho-histogram.png") as tmp:
        plots.rho_against_threshold(rho.astype(float), threshold, orientation, tmp)
    return path
