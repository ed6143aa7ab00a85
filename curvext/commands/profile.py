"""``curvext profile``: principal-curvature profiles for a model and a set of images.

Writes ``profile.parquet`` (or .csv): one row per image and principal curvature (image, rank,
value, pair, grad_norm, converged), and ``profile.png``: the sorted curvatures (paper's Fig. 5b).
Work is done in chunks saved as they finish (``parts/``), so a killed run resumes where it stopped.
A part's name holds a key of everything that made it (the model's weights, the chunk's images, the
settings), so a rerun with another model or setting in the same folder never reads stale parts.

Sharding (see :mod:`curvext.commands.placement`): ``--shard I/N``, or ``RANK/WORLD_SIZE`` under
``torchrun``, computes the chunks ``i`` with ``i % N == I`` on ``--device`` (``cuda:LOCAL_RANK`` by
default). The run that finds every part present (the last shard to finish, or any rerun) writes
the table and the plot.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from curvext.commands.arg_types import positive_float, positive_int
from curvext.commands.model_source import (
    add_data_arguments,
    add_model_arguments,
    is_idx,
    load_test_images,
    load_user_model,
    refuse_normalize_without_checkpoint,
)
from curvext.commands.placement import add_device_argument, parse_shard, resolve_device, shard_from_env
from curvext.data import zoo
from curvext.evaluation import plots
from curvext.geometry.profiles import principal_curvatures
from curvext.utils.atomic_files import atomic_path
from curvext.utils.cache_keys import model_digest, settings_key, tensor_digest
from curvext.utils.model_checks import is_piecewise_linear
from curvext.utils.optional import optional_import

logger = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="principal curvatures at boundary points (table + plot)")
    add_data_arguments(p)
    p.add_argument("--model", default="lenet", help="zoo architecture (lenet, nin)")
    p.add_argument("--activation", default="smooth", choices=("relu", "smooth"))
    add_model_arguments(p)
    p.add_argument("--images", type=positive_int, default=64)
    p.add_argument("--k", type=positive_int, default=20, help="curvatures from each end")
    p.add_argument("--at", choices=("boundary", "input"), default="boundary")
    p.add_argument("--method", choices=("autograd", "fd"), default=None,
                   help="default: autograd for smooth models, fd for relu ones")
    p.add_argument("--h", type=positive_float, default=0.1, help="finite-difference scale for --method fd")
    p.add_argument("--full", action="store_true", help="dense spectrum (small images only)")
    p.add_argument("--chunk", type=positive_int, default=32, help="images per saved part")
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    p.add_argument("--out", default="curvext-out/profile")
    p.add_argument("--cache", default=None, help="zoo cache folder")
    p.add_argument("--no-progress", action="store_true")
    add_device_argument(p)
    p.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                   help="compute chunks i with i %% N == I (default: RANK/WORLD_SIZE under torchrun, else 0/1); "
                        "sharding by hand on one GPU machine, also pass --device cuda:I")
    p.set_defaults(func=run)


def _data(args):
    if args.dataset != "digits" and not args.data_dir:
        raise SystemExit(f"curvext profile: --dataset {args.dataset} needs --data-dir")
    return load_test_images(args, args.images)


def run(args) -> int:
    pd = optional_import("pandas")
    tqdm = optional_import("tqdm.auto").tqdm


    if args.dataset == "folder" and not args.checkpoint:
        raise SystemExit("curvext profile: --dataset folder needs --checkpoint "
                         "(the zoo trains on digits or MNIST only)")
    device = resolve_device(args.device)
    refuse_normalize_without_checkpoint(args, "profile")
    shard = args.shard or shard_from_env()
    ds = _data(args)
    if args.checkpoint:
        model = load_user_model(args, device)
    else:
        model = zoo.train(args.model, args.activation, args.dataset,
                          args.data_dir if is_idx(args.dataset) else None, cache=args.cache).model
    model = model.to(device)
    method = args.method or ("fd" if is_piecewise_linear(model) else "autograd")
    out = Path(args.out)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    tag = f"{args.at}-{method}-k{args.k}-{'full' if args.full else 'lanczos'}"
    settings = dict(model=model_digest(model), at=args.at, method=method, k=args.k, full=args.full,
                    h=args.h if method == "fd" else None)
    starts = range(0, len(ds), args.chunk)

    def part_path(start: int) -> Path:
        x = ds.images[start : start + args.chunk]
        return parts / f"{tag}-{start:06d}-{settings_key(dict(settings, images=tensor_digest(x)))}.parquet"

    paths = {start: part_path(start) for start in starts}
    mine = [start for i, start in enumerate(starts) if shard.owns(i)]
    for start in tqdm(mine, desc=f"profiles (shard {shard})" if shard.count > 1 else "profiles",
                      disable=args.no_progress):
        if not paths[start].is_file():
            _write_part(paths[start], _profile_chunk(model, ds.images[start : start + args.chunk].to(device),
                                                     start, method, args))
    missing = [p for p in paths.values() if not p.is_file()]
    if missing:
        print(f"shard {shard}: its {len(mine)} chunks are done; {len(missing)} chunks of other shards are "
              f"still missing, so the table is left to the run that completes them (or rerun without --shard)")
        return 0
    table = pd.concat([pd.read_parquet(paths[start]) for start in starts], ignore_index=True)
    _write_outputs(table, out, args, method, len(ds))
    return 0


def _profile_chunk(model, x, start: int, method: str, args):
    """One chunk's rows: (image, rank, curvature, cls, base, grad_norm, converged)."""
    pd = optional_import("pandas")

    prof = principal_curvatures(model, x, k=args.k, at=args.at, method=method,
                                h=args.h if method == "fd" else None, full=args.full)
    B, m = prof.values.shape
    return pd.DataFrame({
        "image": (start + torch.arange(B)).repeat_interleave(m).numpy(),
        "rank": torch.arange(m).repeat(B).numpy(),
        "curvature": prof.values.double().flatten().cpu().numpy(),
        "cls": prof.cls.repeat_interleave(m).cpu().numpy(),
        "base": prof.base.repeat_interleave(m).cpu().numpy(),
        "grad_norm": prof.grad_norm.double().repeat_interleave(m).cpu().numpy(),
        "converged": prof.converged.flatten().cpu().numpy(),
    })


def _write_part(path: Path, df) -> None:
    with atomic_path(path) as tmp:  # a killed run never leaves half a part
        df.to_parquet(tmp, index=False)


def _write_outputs(table, out: Path, args, method: str, n_images: int) -> None:
    """The table and the plot, each replaced in one step (shards finishing together may both
    merge); the plot and the printed share cover the images that had a boundary to measure."""
    path = out / f"profile.{args.format}"
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False) if args.format == "parquet" else table.to_csv(tmp, index=False)
    values = table.pivot(index="image", columns="rank", values="curvature").to_numpy()
    measured = values[~np.isnan(values).all(axis=1)]
    skipped = "" if len(measured) == len(values) else (
        f" ({len(values) - len(measured)} without a boundary to measure: NaN rows)")
    if len(measured) == 0:
        (out / "profile.png").unlink(missing_ok=True)  # an earlier run's plot would not be this table's
        print(f"{n_images} images{skipped}; nothing to plot\nwrote {path}")
        return
    with atomic_path(out / "profile.png") as tmp:
        plots.curvature_profile(measured, tmp, title=f"principal curvatures at the {args.at} ({method}, "
                                                      f"{len(measured)} images)")
    near_zero = float((abs(measured) < 0.05 * abs(measured).max(axis=1, keepdims=True)).mean())
    print(f"{n_images} images{skipped}, {values.shape[1]} curvatures each; share within 5% of the largest |value|: "
          f"{100 * near_zero:.0f}%\nwrote {path} and {out / 'profile.png'}")
