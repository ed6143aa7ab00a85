"""``curvext detect``: the calibrated detector over a whole image folder, one Parquet row per
image, resumable, sharded under ``torchrun`` (:func:`curvext.sweep.detect.detect_dataset`)."""
from __future__ import annotations

import sys

from curvext.commands.arg_types import existing_file, output_folder, positive_int
from curvext.commands.model_source import add_single_model_arguments, load_model
from curvext.commands.placement import add_device_argument, add_shard_argument, resolve_device
from curvext.commands.sweep_options import add_folder_arguments, preprocessing_from
from curvext.detection.calibration_file import read_calibration
from curvext.sweep.detect import CHUNK_SIZE, detect_dataset


def add_parser(sub) -> None:
    p = sub.add_parser("detect", help="flag perturbed images of a folder and recover their labels (Parquet rows)",
                       description="Scores every image of --data-dir with a detector saved by `curvext calibrate`, "
                                   "writing OUT/detections/*.parquet (one row per image), then OUT/summary.md and "
                                   "OUT/rho-histogram.png. A rerun computes only what is missing; under torchrun "
                                   "each rank takes its share of the chunks.")
    add_folder_arguments(p, defaults=False)
    p.add_argument("--calibration", type=existing_file, required=True,
                   help="the JSON file written by `curvext calibrate`")
    p.add_argument("--out", type=output_folder, required=True, help="output folder")
    add_single_model_arguments(p)
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="images scored together (default: the calibration's; halved on out-of-memory)")
    p.add_argument("--chunk-size", type=positive_int, default=CHUNK_SIZE,
                   help=f"images per saved part (default {CHUNK_SIZE})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_argument(p)
    add_shard_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    device = resolve_device(args.device)
    calibration = read_calibration(args.calibration)
    recorded = calibration.preprocessing.get("image") or None
    preprocessing = preprocessing_from(args, recorded)  # refuses options that contradict the calibration
    normalize = calibration.preprocessing.get("normalize")
    if args.normalize is not None and [list(v) for v in args.normalize] != normalize:
        raise ValueError(f"--normalize differs from the calibration's {normalize}: leave it out, or calibrate again")
    args.normalize = None  # detect_dataset puts the calibration's normalisation in front of the model
    model = load_model(args, device)
    result = detect_dataset(model, args.data_dir, args.calibration, args.out, preprocessing=preprocessing,
                            device=device, workers=args.workers, batch_size=args.batch_size,
                            chunk_size=args.chunk_size, shard=args.shard, progress=not args.no_progress)
    s = result.status
    print(f"this process computed {s.computed} parts ({s.skipped} done before or by other processes)")
    if result.summary is not None:
        print(result.summary.read_text())
        print(f"wrote {result.folder / 'detections'}, {result.summary}, {result.folder / 'rho-histogram.png'}")
        return 0
    if s.owned_missing:
        print(f"{s.owned_missing} parts of this run are held by another process or were abandoned; rerun the same "
              "command to finish them", file=sys.stderr)
        return 3
    print(f"{s.missing} parts of other shards are still missing; the run that completes them writes the summary")
    return 0
