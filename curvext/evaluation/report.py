"""The evaluation report: its rows, tables and output files (docs/method.md §9)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from curvext.detection.benign import reacts_to_benign_noise
from curvext.detection.recovery import RECOVERY_RULES
from curvext.detection.scale_selection import ScaleChoice
from curvext.evaluation import plots
from curvext.evaluation.rows import SCORES
from curvext.utils.optional import optional_import
from curvext.utils.reprs import ShortRepr

#: column titles of the summary tables
TITLES = {"curvext": "curvext", "max-softmax": "max-softmax", "logit-margin": "logit margin",
          "noise-consistency": "noise consistency", "feature-squeezing": "feature squeezing", "combined": "combined"}


def _pct(value: float, digits: int = 0) -> str:
    return "" if np.isnan(value) else f"{100 * value:.{digits}f}%"


#: fewer evaluated images than this (clean, or successful adversarial ones of an attack) and the
#: report says its numbers are unreliable: a rate measured on n images has a standard error of up
#: to 0.5 / sqrt(n), 0.07 at n = 50, and an AUC on 2 x 50 images one of up to about 0.06
FEW_IMAGES = 50


@dataclass(frozen=True, repr=False)
class EvaluationReport(ShortRepr):
    """rows: one :class:`~curvext.evaluation.rows.ScoreRow` per attack and score; orientation
    used; clean_sign_share: share of the evaluated clean images with rho < 0 (the paper's "clean"
    sign); n_clean: evaluated (attacked) clean images; n_calibration: clean images the detectors
    were calibrated on (disjoint from the evaluated ones when ``calibration_disjoint``);
    clean_fpr: ``{score: share of the evaluated clean images flagged at its calibrated
    threshold}``; recovery: curvext's rule; suggested_recovery: the calibration probe's pick
    (None without the probe)."""

    rows: list
    orientation: str
    clean_sign_share: float
    n_clean: int
    settings: dict = field(default_factory=dict)
    rho_clean: np.ndarray | None = None
    rho_perturbed: dict = field(default_factory=dict)
    scale_choice: ScaleChoice | None = None  # when h was chosen by the probe (``scales=``)
    n_calibration: int = 0
    calibration_disjoint: bool = False
    clean_fpr: dict = field(default_factory=dict)
    recovery: str = "max"
    suggested_recovery: str | None = None
    threshold: float | None = None  # curvext's calibrated threshold on rho (flagged: the orientation's side)
    benign_fpr: dict = field(default_factory=dict)  # like clean_fpr, on the calibration images + benign noise

    def _attacks(self) -> list:
        return list(dict.fromkeys(r.attack for r in self.rows))

    def row(self, attack: str, score: str):
        return next(r for r in self.rows if r.attack == attack and r.score == score)

    def table(self) -> str:
        """Markdown table of all rows."""
        head = ("| attack | success | median norm | score | AUC | acc@best | TPR@5%FPR | TPR@calibrated | recovery "
                "| recovery if flagged | paired shift |\n|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        lines = [head]
        for r in self.rows:
            score = f"{r.score} ({r.setting})" if r.score == "combined" else r.score
            rates = (r.accuracy, r.tpr_at_fpr, r.tpr_calibrated, r.recovery, r.recovery_if_flagged)
            lines.append(f"| {r.attack} | {100 * r.success_rate:.0f}% | {r.median_norm:.3f} | {score} | {r.auc:.3f} | "
                         + " | ".join(_pct(v, 1) for v in rates) + f" | {_pct(r.paired_shift)} |")
        lines.append("\nrecovery: curvext's recovered class on its rows; on the baselines' rows the model's "
                     "runner-up class (the trivial rule) for the images each baseline flags. TPR@calibrated: "
                     "perturbed images flagged at the threshold calibrated on clean images at the target FPR. "
                     "paired shift: share of perturbed images scoring more toward the perturbed side than their "
                     "own clean image. combined: the larger clean percentile of curvext and the row's best baseline.")
        return "\n".join(lines)

    def summary(self) -> str:
        """Three compact tables: AUC per attack and score; the share flagged at the calibrated
        thresholds (first row: the evaluated clean images); label recovery by every rule."""
        scores = [s for s in SCORES if any(r.score == s for r in self.rows)]
        cols = " | ".join(TITLES[s] for s in scores)
        bar = "|---|---:|---:|" + "---:|" * len(scores)
        auc = [f"| attack | success | median l2/l-inf | {cols} |", bar]
        tpr = [f"| attack | images | | {cols} |", bar,
               f"| clean (false positives) | {self.n_clean} | | "
               + " | ".join(_pct(self.clean_fpr.get(s, np.nan)) for s in scores) + " |"]
        if self.benign_fpr:
            tpr.append(f"| clean + benign noise (sigma 1/255) | {self.n_calibration} | | "
                       + " | ".join(_pct(self.benign_fpr.get(s, np.nan)) for s in scores) + " |")
        for a in self._attacks():
            first = self.row(a, "curvext")
            combined = self.row(a, "combined") if "combined" in scores else None
            cells = []
            for s in scores:
                r = self.row(a, s)
                cell = "" if np.isnan(r.auc) else f"{r.auc:.2f}"
                if s == "combined" and cell:
                    cell += f" (+{r.setting.split(' + ')[-1]})"
                cells.append(cell)
            best = max((self.row(a, s).auc for s in scores if s not in ("curvext", "combined")), default=np.nan)
            if combined is not None and not np.isnan(best) and combined.auc > best + 0.005:
                cells[-1] = f"**{cells[-1]}**"
            auc.append(f"| {a} | {_pct(first.success_rate)} | {first.median_norm:.2f} | " + " | ".join(cells) + " |")
            tpr.append(f"| {a} | {first.n_perturbed} | | "
                       + " | ".join(_pct(self.row(a, s).tpr_calibrated) for s in scores) + " |")
        rules = " | ".join(RECOVERY_RULES)
        rec = [f"| attack | curvext ({self.recovery}) at best / calibrated threshold | if flagged: {rules} "
               "| runner-up |",
               "|---|---:|" + "---:|" * (len(RECOVERY_RULES) + 1)]
        for a in self._attacks():
            r = self.row(a, "curvext")
            per_rule = [r.recovery_max, r.recovery_min, r.recovery_max_top2, r.recovery_min_top2]
            runner = self.row(a, "max-softmax").recovery_if_flagged
            rec.append(f"| {a} | {_pct(r.recovery)} / {_pct(r.recovery_calibrated)} | "
                       + " | ".join(_pct(v) for v in per_rule) + f" | {_pct(runner)} |")
        return ("AUC (bold: combined above the best baseline)\n\n" + "\n".join(auc)
                + "\n\nflagged at the thresholds calibrated on clean images at the target FPR\n\n" + "\n".join(tpr)
                + "\n\nlabel recovery of the adversarial images (if flagged: every one flagged)\n\n" + "\n".join(rec))

    def few_images_note(self) -> str | None:
        """A warning when the clean images or an attack's successful adversarial images number
        fewer than ``FEW_IMAGES`` (None otherwise)."""
        counts = {r.attack: r.n_perturbed for r in self.rows}
        few = {a: n for a, n in counts.items() if n < FEW_IMAGES}
        if self.n_clean >= FEW_IMAGES and not few:
            return None
        attacks = "; ".join(f"{a}: {n}" for a, n in few.items())
        adaptive = [a for a in few if a.startswith("adaptive")]  # capped by --adaptive-images
        options = (["--images"] if self.n_clean < FEW_IMAGES or len(adaptive) < len(few) else []) + (
            ["--adaptive-images"] if adaptive else [])
        return (f"**few images**: {self.n_clean} clean" + (f", adversarial {attacks}" if few else "")
                + f"; with fewer than {FEW_IMAGES} a rate or an AUC can be off by 0.07 or more (one standard error); "
                f"evaluate more images ({' and '.join(options)}) before reading the numbers")

    def header(self) -> str:
        """What the detectors were calibrated on, how curvext decides, the baselines' settings."""
        split = (f"{self.n_calibration} clean calibration images disjoint from the {self.n_clean} evaluated ones"
                 if self.calibration_disjoint else f"the {self.n_clean} evaluated clean images themselves")
        rule = self.settings.get("orientation_rule", "probe")
        source = f" (PGD-{self.settings.get('probe_norm', 'l2')} probe)" if rule == "probe" else f" ({rule})"
        suggestion = ""
        if self.suggested_recovery is not None:
            suggestion = f" (the calibration probe suggests {self.suggested_recovery})"
        text = (f"calibrated on {split}; perturbed expected **{self.orientation}**{source}, recovery by "
                f"{self.recovery} curvature{suggestion}; clean images with rho < 0 (the paper's clean sign): "
                f"{100 * self.clean_sign_share:.1f}%")
        if "squeezer_text" in self.settings:
            text += (f"\nbaselines: feature squeezing {self.settings['squeezer_text']}; noise consistency sigma "
                     f"{self.settings['noise_sigma']:g}, {self.settings['noise_samples']} draws")
        for name, how in self.settings.get("adaptive", {}).items():
            text += f"\nadaptive attack {name}: {how}"
        if reacts_to_benign_noise(self.benign_fpr.get("curvext", 0.0), self.settings.get("fpr")):
            text += (f"\n**curvext flags {100 * self.benign_fpr['curvext']:.0f}% of the calibration images once "
                     "benign noise of sigma 1/255 is added**: at this setting it reacts to any perturbation, so its "
                     "detection rates below say little")
        note = self.few_images_note()
        return text if note is None else f"{text}\n{note}"

    def dataframe(self):
        return optional_import("pandas").DataFrame([r.__dict__ for r in self.rows])


def write_outputs(report: EvaluationReport, out_dir: str | os.PathLike, prefix: str = "eval") -> list[Path]:
    """Markdown, CSV and Parquet tables, the ROC plot and the rho histogram; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{prefix}.md", out / f"{prefix}.csv", out / f"{prefix}.parquet",
             out / f"{prefix}-roc.png", out / f"{prefix}-rho-hist.png"]
    paths[0].write_text(report.header() + "\n\n" + report.summary() + "\n\n" + report.table() + "\n")
    df = report.dataframe()
    df.to_csv(paths[1], index=False)
    df.to_parquet(paths[2], index=False)
    plots.roc_curves(report, paths[3])
    plots.rho_histogram(report, paths[4])
    return paths
