"""``curvext profile``: principal-curvature profiles for a model and a set of images
(:func:`curvext.sweep.profile.profile_dataset`).

Writes ``profile.parquet`` (or .csv): one row per image and principal curvature (image, name,
rank, curvature, cls, base, grad_norm, converged), and ``profile.png``: the sorted curvatures
(the paper's Fig. 5b). Work is saved in chunks as they finish, so a killed run resumes where it
stopped; under ``torchrun`` (or with ``--shard I/N``) each process computes its share of the
chunks, and the run that finds every part present writes the table and the plot.
"""
from __future__ import annotations

from curvext import data
from curvext.commands.arg_types import non_negative_int, positive_float, positive_int
from curvext.commands.model_source import (
    add_data_arguments,
    add_zoo_model_arguments,
    is_idx,
    load_command_model,
)
from curvext.commands.placement import add_device_argument, add_shard_argument, resolve_device
from curvext.commands.sweep_options import add_table_output_arguments
from curvext.data.image_folder import Preprocessing, scan_image_folder
from curvext.sweep.profile import ProfileSettings, profile_dataset
from curvext.sweep.sources import FolderSource, TensorSource
from curvext.utils.model_checks import is_piecewise_linear


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="principal curvatures at boundary points (table + plot)")
    add_data_arguments(p)
    add_zoo_model_arguments(p, "smooth")
    p.add_argument("--images", type=positive_int, default=64, help="images (default 64; every file of a folder "
                                                                    "when --dataset folder)")
    p.add_argument("--k", type=positive_int, default=20, help="curvatures from each end (default 20)")
    p.add_argument("--at", choices=("boundary", "input"), default="boundary")
    p.add_argument("--method", choices=("autograd", "fd"), default=None,
                   help="default: autograd for smooth models, fd for relu ones")
    p.add_argument("--h", type=positive_float, default=0.1, help="finite-difference scale for --method fd")
    p.add_argument("--full", action="store_true", help="dense spectrum (small images only)")
    p.add_argument("--chunk", type=positive_int, default=32, help="images per saved part")
    p.add_argument("--workers", type=non_negative_int, default=2,
                   help="--dataset folder: DataLoader processes (default 2)")
    add_table_output_arguments(p, "curvext-out/profile")
    add_device_argument(p)
    add_shard_argument(p)
    p.set_defaults(func=run)


def _source(args):
    if args.dataset == "digits":
        return TensorSource(data.load_digits("test").subset(args.images))
    if not args.data_dir:
        raise ValueError(f"--dataset {args.dataset} needs --data-dir")
    if is_idx(args.dataset):
        return TensorSource(data.load_idx(args.data_dir, "test", limit=args.images))
    return FolderSource(scan_image_folder(args.data_dir), Preprocessing(args.image_size, None, args.channels),
                        args.workers)


def run(args) -> int:
    device = resolve_device(args.device)
    model = load_command_model(args, device)
    source = _source(args)
    method = args.method or ("fd" if is_piecewise_linear(model) else "autograd")
    settings = ProfileSettings(args.k, args.at, method, args.h if method == "fd" else None, args.full)
    result = profile_dataset(model, source, args.out, settings, device=device, chunk_size=args.chunk,
                             shard=args.shard, table_format=args.format, progress=not args.no_progress)
    if result.table is None:
        print(f"this process computed {result.status.computed} chunks; {result.status.missing} chunks of other "
              "shards are still missing, so the table is left to the run that completes them (or rerun without "
              "--shard)")
        return 0
    n = len(source)
    skipped = "" if result.measured == n else f" ({n - result.measured} without a boundary to measure: NaN rows)"
    if result.measured == 0:
        print(f"{n} images{skipped}; nothing to plot\nwrote {result.table}")
        return 0
    print(f"{n} images{skipped}; share of curvatures within 5% of each image's largest |value|: "
          f"{100 * result.near_zero:.0f}%\nwrote {result.table} and {result.table.parent / 'profile.png'}")
    return 0
