"""``calibrate_dataset``: choose the scale h and calibrate the detector on clean images of a
folder, and save the calibration for :func:`curvext.sweep.detect.detect_dataset`."""
from __future__ import annotations

import logging
import os

import torch

from curvext.data.image_folder import Preprocessing, scan_image_folder
from curvext.data.normalization import Normalized
from curvext.detection.calibration_file import Calibration, read_calibration
from curvext.detection.config import DetectorConfig
from curvext.detection.detector import CurvatureDetector
from curvext.detection.scale_selection import PROBE_SCALES
from curvext.sweep.sources import FolderSource
from curvext.utils.progress import progress_bar

logger = logging.getLogger(__name__)


def calibrate_dataset(model: torch.nn.Module, data_dir: str | os.PathLike, out: str | os.PathLike, *,
                      images: int, config: DetectorConfig | None = None, preprocessing: Preprocessing | None = None,
                      normalize: tuple | None = None, fpr: float = 0.05, scales="auto", device=None,
                      workers: int = 2) -> Calibration:
    """Calibrate on ``images`` clean images of ``data_dir``, drawn without replacement by
    ``config.seed`` (the same images on every run), and write the calibration JSON to ``out``.

    ``scales``: "auto" chooses h among ``PROBE_SCALES`` (fd/fd2 methods; autograd has no h), a
    sequence chooses among its values, None keeps ``config.h``. ``normalize``: ``(mean, std)``
    per channel, put in front of ``model`` (:class:`curvext.data.normalization.Normalized`) and
    recorded with the preprocessing, so that :func:`curvext.sweep.detect.detect_dataset` puts it
    there again. Unreadable files are skipped (logged); fewer than 2 readable images is an error."""
    if isinstance(images, bool) or not isinstance(images, int) or images < 2:
        raise ValueError(f"images must be an int >= 2 (clean images to calibrate on), got {images!r}")
    config = config or DetectorConfig()
    preprocessing = preprocessing or Preprocessing()
    device = torch.device(device or "cpu")
    manifest = scan_image_folder(data_dir)
    g = torch.Generator().manual_seed(config.seed)
    chosen = sorted(torch.randperm(len(manifest), generator=g)[: min(images, len(manifest))].tolist())
    source = FolderSource(manifest, preprocessing, workers)
    kept, bad = [], []
    with progress_bar(total=len(chosen), desc="reading calibration images", unit="img", leave=False) as bar:
        for batch in source.batches(chosen, 64, device):
            bar.update(len(batch.indices))
            ok = [i for i, e in enumerate(batch.errors) if not e]
            kept.append(batch.images[ok])
            bad += [manifest.paths[batch.indices[i]] for i, e in enumerate(batch.errors) if e]
    if bad:
        logger.warning("%d of the %d calibration images could not be read and are skipped: %s", len(bad),
                       len(chosen), ", ".join(bad[:5]))
    x = torch.cat(kept)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 readable images in {data_dir} to calibrate, got {x.shape[0]}")
    if normalize is not None:
        model = Normalized(model, *normalize)
        model.training = False  # the wrapper's flag; eval() is refused by torch.export modules
    detector = CurvatureDetector(model.to(device), config)
    if scales is not None and config.method != "autograd":
        choice = detector.choose_scale(x, PROBE_SCALES if scales == "auto" else scales)
        logger.info("scale h = %g chosen from %d clean and %d probe images", choice.h, choice.n_clean,
                    choice.n_probe)
    detector.calibrate(x, fpr=fpr)
    record = {"image": preprocessing.to_dict(),
              "normalize": None if normalize is None else [list(v) for v in normalize]}
    detector.save(out, preprocessing=record)
    return read_calibration(out)
