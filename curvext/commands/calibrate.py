"""``curvext calibrate``: calibrate the detector on clean images of a folder and save it as JSON
(:func:`curvext.sweep.calibrate.calibrate_dataset`)."""
from __future__ import annotations

import logging

from curvext.commands.arg_types import fraction, positive_float, positive_int, scales
from curvext.commands.model_source import (
    add_single_model_arguments,
    load_model,
    refuse_normalize_without_checkpoint,
)
from curvext.commands.placement import add_device_argument, resolve_device
from curvext.commands.sweep_options import add_folder_arguments, preprocessing_from
from curvext.detection.config import DetectorConfig
from curvext.sweep.calibrate import calibrate_dataset
from curvext.utils.model_checks import is_piecewise_linear, output_count

logger = logging.getLogger(__name__)

MANY_CLASSES, MANY_CLASSES_K = 100, 10  # above MANY_CLASSES outputs, K defaults to the top MANY_CLASSES_K


def add_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="calibrate the detector on clean images of a folder; save it as JSON",
                       description="Chooses the scale h (fd/fd2), the orientation and the threshold from clean "
                                   "images alone and writes them, with the model's digest and the preprocessing, "
                                   "to a JSON file that `curvext detect` reads.")
    add_folder_arguments(p)
    p.add_argument("--images", type=positive_int, default=500, help="clean images to calibrate on (default 500)")
    p.add_argument("--out", required=True, help="calibration file to write, e.g. cal.json")
    add_single_model_arguments(p)
    p.add_argument("--method", choices=("autograd", "fd", "fd2"), default=None,
                   help="curvature measurement (default: fd2 for ReLU/max-pool models, autograd otherwise)")
    p.add_argument("--h", type=scales, default="auto", metavar="auto|H[,H...]",
                   help="finite-difference scale for fd/fd2: auto (default) chooses among the probe's candidates, "
                        "a list chooses among its values, one value fixes it")
    p.add_argument("--directions", type=positive_int, default=16, help="random directions T (default 16)")
    p.add_argument("--classes", type=positive_int, default=None,
                   help=f"competing classes K (default: all, or the top {MANY_CLASSES_K} above {MANY_CLASSES} classes)")
    p.add_argument("--orientation", default="probe", choices=("probe", "higher", "lower", "auto"),
                   help="side of rho where perturbed images are expected (default probe)")
    p.add_argument("--probe-norm", default="l2", choices=("l2", "linf"), help="norm of the probe's PGD (default l2)")
    p.add_argument("--probe-eps", type=positive_float, default=None,
                   help="largest probe radius in input units (default 0.05 sqrt(d) for l2, 0.2 for linf)")
    p.add_argument("--fpr", type=fraction, default=0.05, help="target false-positive rate (default 0.05)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images scored together (default 16)")
    p.add_argument("--seed", type=int, default=0, help="directions, probe and the choice of images (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    device = resolve_device(args.device)
    refuse_normalize_without_checkpoint(args, "calibrate")
    normalize, args.normalize = args.normalize, None  # calibrate_dataset puts it in front and records it
    model = load_model(args, device)
    preprocessing = preprocessing_from(args)
    shape = (preprocessing.channels, preprocessing.image_size, preprocessing.image_size)
    outputs = output_count(model, shape, device, "check --channels and --image-size")
    method = args.method or ("fd2" if is_piecewise_linear(model) else "autograd")
    classes = args.classes or (MANY_CLASSES_K if outputs > MANY_CLASSES else None)
    fixed_h = isinstance(args.h, list) and len(args.h) == 1
    config = DetectorConfig(num_directions=args.directions, classes=classes, method=method,
                            h=args.h[0] if fixed_h and method != "autograd" else None,
                            orientation=args.orientation, probe_norm=args.probe_norm, probe_eps=args.probe_eps,
                            seed=args.seed, batch_size=args.batch_size)
    cal = calibrate_dataset(model, args.data_dir, args.out, images=args.images, config=config,
                            preprocessing=preprocessing, normalize=normalize,
                            scales=None if fixed_h else args.h, fpr=args.fpr, device=device, workers=args.workers)
    scale = "" if method == "autograd" else f", h = {cal.config.h:g}"
    print(f"calibrated on {cal.n_images} clean images: method {method}{scale}, T = {cal.config.num_directions}, "
          f"K = {cal.config.classes or outputs - 1}; perturbed when rho is {cal.orientation} than "
          f"{cal.threshold:.6g} (target FPR {cal.fpr:g}); recovery rule {cal.recovery}; calibration images with "
          f"benign noise (sigma 1/255) flagged: {100 * cal.benign_flag_rate:.0f}%\nwrote {args.out}")
    return 0
