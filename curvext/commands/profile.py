"""``curvext profile``: principal-curvature profiles for a model and a set of images.

Writes ``profile.parquet`` (or .csv): one row per image and principal curvature (image, rank,
value, pair, grad_norm, converged), and ``profile.png``: the sorted curvatures (paper's Fig. 5b).
Work is done in chunks saved as they finish (``parts/``), so a killed run resumes where it stopped.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="principal curvatures at boundary points (table + plot)")
    p.add_argument("--dataset", choices=("digits", "mnist", "folder"), default="digits")
    p.add_argument("--data-dir", default=None, help="MNIST IDX folder, or the image folder for --dataset folder")
    p.add_argument("--image-size", type=int, default=28, help="resize for --dataset folder")
    p.add_argument("--model", default="lenet", help="zoo architecture (lenet, nin)")
    p.add_argument("--activation", default="smooth", choices=("relu", "smooth"))
    p.add_argument("--checkpoint", default=None, help="TorchScript or state-dict file instead of the zoo")
    p.add_argument("--module-path", default=None, help="package.module:Class for a state-dict checkpoint")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--k", type=int, default=20, help="curvatures from each end")
    p.add_argument("--at", choices=("boundary", "input"), default="boundary")
    p.add_argument("--method", choices=("autograd", "fd"), default=None,
                   help="default: autograd for smooth models, fd for relu ones")
    p.add_argument("--h", type=float, default=0.1, help="finite-difference scale for --method fd")
    p.add_argument("--full", action="store_true", help="dense spectrum (small images only)")
    p.add_argument("--chunk", type=int, default=32, help="images per saved part")
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    p.add_argument("--out", default="curvext-out/profile")
    p.add_argument("--cache", default=None, help="zoo cache folder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _data(args):
    from curvext import data

    if args.dataset == "digits":
        return data.load_digits("test").subset(args.images)
    if not args.data_dir:
        raise SystemExit(f"curvext profile: --dataset {args.dataset} needs --data-dir")
    if args.dataset == "mnist":
        return data.load_mnist(args.data_dir, "test", limit=args.images)
    return data.load_image_folder(args.data_dir, size=args.image_size).subset(args.images)


def run(args) -> int:
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from curvext import plots, zoo
    from curvext._model_checks import is_piecewise_linear
    from curvext.geometry.profiles import principal_curvatures

    ds = _data(args)
    if args.checkpoint:
        model = zoo.load_checkpoint(args.checkpoint, args.module_path).eval()
    else:
        model = zoo.train(args.model, args.activation, "mnist" if args.dataset == "mnist" else "digits",
                          args.data_dir if args.dataset == "mnist" else None, cache=args.cache).model
    method = args.method or ("fd" if is_piecewise_linear(model) else "autograd")
    out = Path(args.out)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    tag = f"{args.at}-{method}-k{args.k}-{'full' if args.full else 'lanczos'}"
    frames = []
    for start in tqdm(range(0, len(ds), args.chunk), desc="profiles", disable=args.no_progress):
        part = parts / f"{tag}-{start:06d}.parquet"
        if not part.is_file():
            x = ds.images[start : start + args.chunk]
            prof = principal_curvatures(model, x, k=args.k, at=args.at, method=method,
                                        h=args.h if method == "fd" else None, full=args.full)
            B, m = prof.values.shape
            df = pd.DataFrame({
                "image": (start + torch.arange(B)).repeat_interleave(m).numpy(),
                "rank": torch.arange(m).repeat(B).numpy(),
                "curvature": prof.values.double().flatten().numpy(),
                "cls": prof.cls.repeat_interleave(m).numpy(),
                "base": prof.base.repeat_interleave(m).numpy(),
                "grad_norm": prof.grad_norm.double().repeat_interleave(m).numpy(),
                "converged": prof.converged.flatten().numpy(),
            })
            tmp = part.with_suffix(f".tmp{os.getpid()}")
            df.to_parquet(tmp, index=False)
            os.replace(tmp, part)
        frames.append(pd.read_parquet(part))
    table = pd.concat(frames, ignore_index=True)
    path = out / f"profile.{args.format}"
    table.to_parquet(path, index=False) if args.format == "parquet" else table.to_csv(path, index=False)
    values = table.pivot(index="image", columns="rank", values="curvature").to_numpy()
    plots.curvature_profile(values, out / "profile.png",
                            title=f"principal curvatures at the {args.at} ({method}, {len(ds)} images)")
    near_zero = float((abs(values) < 0.05 * abs(values).max(axis=1, keepdims=True)).mean())
    print(f"{len(ds)} images, {values.shape[1]} curvatures each; share within 5% of the largest |value|: "
          f"{100 * near_zero:.0f}%\nwrote {path} and {out / 'profile.png'}")
    return 0
