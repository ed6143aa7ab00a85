"""A calibrated detector on disk: a versioned JSON file with the detector's settings, what
calibration learned, and what it was calibrated for (the model's weights, the preprocessing).

Calibrate once, detect everywhere: ``CurvatureDetector.save`` writes it and
``CurvatureDetector.load`` refuses it for a model whose weights differ from the ones it was
calibrated on (the model digest of :func:`curvext.utils.cache_keys.model_digest`).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from curvext.detection.config import ORIENTATIONS, DetectorConfig
from curvext.detection.recovery import RECOVERY_RULES
from curvext.utils.atomic_files import atomic_path

FORMAT = "curvext-calibration"
VERSION = 1


@dataclass(frozen=True)
class Calibration:
    """config: the detector's settings (h resolved). threshold, orientation ("higher"/"lower"),
    recovery (a rule of ``RECOVERY_RULES``): what calibration set. fpr: its target
    false-positive rate (None when the threshold was fitted on labelled images). model_digest:
    the weights it was calibrated on. preprocessing: how image files became inputs (``{"image":
    Preprocessing.to_dict(), "normalize": [mean, std] or None}``), empty for tensors.
    n_images: clean images used. scale_choice: ``{h: separation}`` when h was chosen, else empty.
    curvext_version: the version that wrote it. benign_flag_rate: share of the calibration images
    flagged once benign noise is added (:mod:`curvext.detection.benign`; None when not measured)."""

    config: DetectorConfig
    threshold: float
    orientation: str
    recovery: str
    fpr: float | None
    model_digest: str
    preprocessing: dict = field(default_factory=dict)
    n_images: int = 0
    scale_choice: dict = field(default_factory=dict)
    curvext_version: str = ""
    benign_flag_rate: float | None = None

    def __post_init__(self):
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {self.orientation!r}")
        if self.recovery not in RECOVERY_RULES:
            raise ValueError(f"recovery must be one of {RECOVERY_RULES}, got {self.recovery!r}")
        if not isinstance(self.threshold, (int, float)) or self.threshold != self.threshold:
            raise ValueError(f"threshold must be a number, got {self.threshold!r}")


def write_calibration(path: str | os.PathLike, calibration: Calibration) -> Path:
    """Write ``calibration`` as JSON to ``path`` in one step (a reader never sees half a file)."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise IsADirectoryError(f"calibration path {out} is a folder; give a file name such as {out / 'cal.json'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    body = asdict(calibration)
    body["config"] = calibration.config.to_dict()
    body["scale_choice"] = {f"{h:g}": s for h, s in calibration.scale_choice.items()}
    document = {"format": FORMAT, "version": VERSION, **body}
    with atomic_path(out) as tmp:
        Path(tmp).write_text(json.dumps(document, indent=2) + "\n")
    return out


def read_calibration(path: str | os.PathLike) -> Calibration:
    """The :class:`Calibration` in the file ``path``; ValueError naming the file when it is not a
    curvext calibration, has another format version, or holds invalid settings."""
    source = Path(path).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"calibration file {source} does not exist")
    try:
        document = json.loads(source.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{source} is not a curvext calibration (not JSON: {err})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{source} is not a curvext calibration (no \"format\": \"{FORMAT}\")")
    if document.get("version") != VERSION:
        raise ValueError(f"{source} has calibration format version {document.get('version')!r}; this curvext "
                         f"reads version {VERSION}: calibrate again")
    try:
        return Calibration(
            config=DetectorConfig.from_dict(document["config"]),
            threshold=float(document["threshold"]), orientation=document["orientation"],
            recovery=document["recovery"], fpr=None if document.get("fpr") is None else float(document["fpr"]),
            model_digest=str(document["model_digest"]),
            preprocessing=dict(document.get("preprocessing") or {}), n_images=int(document.get("n_images", 0)),
            scale_choice={float(h): float(s) for h, s in (document.get("scale_choice") or {}).items()},
            curvext_version=str(document.get("curvext_version", "")),
            benign_flag_rate=None if document.get("benign_flag_rate") is None else float(document["benign_flag_rate"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{source}: invalid calibration ({err})") from None
