"""``detect_dataset``: a calibrated detector over a whole image folder, one row per image,
exactly once, resumable, sharded over the ranks of a ``torchrun`` job.

Output (``out``): ``detections/part-<chunk>.parquet`` with the columns of :data:`COLUMNS`, one
row per image in manifest order; ``summary.md`` and ``rho-histogram.png`` once every part exists;
``run.json``, the run's identity (a different model, calibration, folder or chunking is refused).
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from curvext.data.image_folder import Preprocessing, scan_image_folder
from curvext.data.normalization import Normalized
from curvext.detection.calibration_file import read_calibration
from curvext.detection.detector import CurvatureDetector
from curvext.detection.scoring import Scores
from curvext.sweep.engine import Chunks, Shard, SweepStatus, run_chunks, stop_distributed
from curvext.sweep.output import claim_output_folder
from curvext.sweep.parts import PartStore
from curvext.sweep.sources import Batch, FolderSource
from curvext.sweep.summary import write_detection_summary
from curvext.utils.model_checks import output_count
from curvext.utils.optional import optional_import
from curvext.utils.progress import progress_bar

logger = logging.getLogger(__name__)

#: column -> pyarrow type name; list columns hold the K competing classes by decreasing logit
COLUMNS = {"index": "int64", "path": "string", "label": "int64", "predicted": "int64", "rho": "float64",
           "perturbed": "bool", "recovered": "int64", "top_classes": "list<int64>",
           "top_curvatures": "list<float64>", "error": "string"}
CHUNK_SIZE = 256


@dataclass(frozen=True)
class DetectResult:
    """folder: the output folder; status: what this process did (:class:`SweepStatus`); summary:
    the summary file when this process wrote it, else None."""

    folder: Path
    status: SweepStatus
    summary: Path | None


def detect_dataset(model: torch.nn.Module, data_dir: str | os.PathLike, calibration: str | os.PathLike,
                   out: str | os.PathLike, *, preprocessing: Preprocessing | None = None, device=None,
                   workers: int = 2, batch_size: int | None = None, chunk_size: int = CHUNK_SIZE,
                   shard: Shard | None = None, progress: bool = False) -> DetectResult:
    """Score every image of ``data_dir`` (ImageFolder layout or flat) with the detector saved in
    ``calibration`` for ``model`` (refused when the model's digest differs).

    ``model`` is the user's model; the normalisation recorded at calibration is put in front of
    it. Images are preprocessed as recorded at calibration (``preprocessing`` is needed only when
    the calibration records none, and must agree with it otherwise). ``batch_size`` images are
    scored together (default: the calibration's; halved and retried, logged, when the device runs
    out of memory). An image that cannot be read, or whose curvature is not finite, becomes a row
    with ``error`` set. Rerunning the same call computes only the chunks whose part is missing."""
    device = torch.device(device or "cpu")
    settings = read_calibration(calibration)
    preprocessing = _preprocessing(settings.preprocessing.get("image"), preprocessing)
    normalize = settings.preprocessing.get("normalize")
    model = (model if normalize is None else Normalized(model, *normalize)).to(device)
    model.training = False  # the wrapper's flag; eval() is refused by torch.export modules
    detector = CurvatureDetector.load(calibration, model)
    source = FolderSource(scan_image_folder(data_dir), preprocessing, workers)
    shape = (preprocessing.channels, preprocessing.image_size, preprocessing.image_size)
    output_count(model, shape, device, "the calibration's preprocessing does not fit this model")
    if batch_size is not None:
        detector.batch_size = batch_size
    chunks = Chunks(len(source), chunk_size)
    identity = {"kind": "detect", "model_digest": settings.model_digest, "chunk_size": chunk_size,
                "calibration": hashlib.sha256(Path(calibration).expanduser().read_bytes()).hexdigest()[:16],
                "data": source.identity(), "batch_size": detector.batch_size, "device": device.type}
    folder = claim_output_folder(out, identity)
    store = PartStore(folder / "detections")
    shard = shard or Shard.from_env()
    mine = sum(len(chunks.items(i)) for i in range(chunks.count) if shard.owns(i))
    bar = progress_bar(total=mine, unit="img", desc=f"detect (rank {shard})" if shard.count > 1 else "detect",
                       enabled=progress)

    def compute(items: range, heartbeat: Callable[[], None]):
        rows = []
        for batch in source.batches(items, max(detector.batch_size, 1) * 4, device):
            rows.extend(_rows(detector, source, batch))
            heartbeat()
            bar.update(len(batch.indices))
        return _table(rows)

    with bar:
        status = run_chunks(store, chunks, compute, shard=shard, on_skipped=bar.update)
    summary = None
    if status.leader:
        summary = write_detection_summary(store.read(chunks.count), folder, detector.threshold,
                                          detector.orientation, source.manifest.classes)
    elif status.missing:
        logger.info("%d chunks are still missing (other ranks or processes); the summary is written by the "
                    "run that completes them", status.missing)
    stop_distributed(status)
    return DetectResult(folder, status, summary)


def _preprocessing(recorded: dict | None, given: Preprocessing | None) -> Preprocessing:
    if not recorded:
        if given is None:
            raise ValueError("the calibration records no preprocessing (it was saved without one): pass "
                             "preprocessing (image size, resize, channels) for its images")
        return given
    if given is not None and given != Preprocessing(**recorded):
        raise ValueError(f"preprocessing {given} differs from the calibration's {recorded}: a calibration holds "
                         "for the preprocessing it was made with")
    return Preprocessing(**recorded)


def _rows(detector: CurvatureDetector, source: FolderSource, batch: Batch) -> list[dict]:
    errors = list(batch.errors)
    ok = [i for i, e in enumerate(errors) if not e]
    scored = {}
    for position, (scores, error) in zip(ok, _score_each_finite(detector, batch.images[ok])):
        if error:
            errors[position] = error
            continue
        decision = detector.decide(scores)
        scored[position] = dict(predicted=int(decision.predicted[0]), rho=float(decision.rho[0]),
                                perturbed=bool(decision.perturbed[0]), recovered=int(decision.recovered[0]),
                                top_classes=scores.competitors[0].tolist(),
                                top_curvatures=scores.per_class[0].gather(0, scores.competitors[0]).double().tolist())
    rows = []
    for position, (index, error) in enumerate(zip(batch.indices, errors)):
        row = dict(index=index, path=source.name(index), label=source.label(index), error=error or None)
        row.update(scored.get(position, dict(predicted=None, rho=None, perturbed=None, recovered=None,
                                             top_classes=None, top_curvatures=None)))
        rows.append(row)
    return rows


def _score_each_finite(detector: CurvatureDetector, x: torch.Tensor) -> list[tuple]:
    """``(scores of one image, "")`` per image of ``x``; an image whose curvature is not finite
    (e.g. a zero class gradient) gets ``(None, reason)`` instead of stopping the batch."""
    if x.shape[0] == 0:
        return []
    try:
        s = _score(detector, x)
    except FloatingPointError:
        if x.shape[0] == 1:
            return [(None, "non-finite curvature (a class gradient is zero or the model overflows here)")]
        return [item for i in range(x.shape[0]) for item in _score_each_finite(detector, x[i : i + 1])]
    return [(Scores(s.rho[i : i + 1], s.per_class[i : i + 1], s.predicted[i : i + 1], s.competitors[i : i + 1]), "")
            for i in range(x.shape[0])]


def _score(detector: CurvatureDetector, x: torch.Tensor):
    """``detector.score(x)``; on a device out-of-memory error the detector's batch size is
    halved (logged) and the images scored again, down to one image at a time."""
    while True:
        out_of_memory = False
        try:
            return detector.score(x)
        except torch.OutOfMemoryError:
            if detector.batch_size == 1:
                raise
            out_of_memory = True  # cleaned up below, once the failed attempt's frames are released
        if out_of_memory:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            detector.batch_size = max(1, detector.batch_size // 2)
            logger.warning("out of memory: scoring %d images at a time from now on", detector.batch_size)


def _table(rows: list[dict]):
    pa = optional_import("pyarrow")
    types = {"int64": pa.int64(), "string": pa.string(), "float64": pa.float64(), "bool": pa.bool_(),
             "list<int64>": pa.list_(pa.int64()), "list<float64>": pa.list_(pa.float64())}
    schema = pa.schema([(name, types[kind]) for name, kind in COLUMNS.items()])
    return pa.Table.from_pylist(rows, schema=schema)
