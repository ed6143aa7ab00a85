"""``profile_dataset``: principal-curvature profiles of a whole dataset on the sweep engine
(chunks, exactly-once parts, torchrun sharding), then one table and one plot.

Parts live in ``<out>/parts/<key>/``, where the key names the model's digest, the images and
the settings: another model or setting in the same ``out`` gets its own parts and never reads
these. The run that finds every part present writes ``<out>/profile.parquet`` (or ``.csv``) and
``<out>/profile.png``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from curvext.evaluation import plots
from curvext.geometry.profiles import principal_curvatures
from curvext.sweep.engine import Chunks, Shard, SweepStatus, run_chunks, stop_distributed
from curvext.sweep.parts import PartStore
from curvext.utils.atomic_files import atomic_path
from curvext.utils.cache_keys import model_digest, settings_key
from curvext.utils.optional import optional_import
from curvext.utils.progress import progress_bar


@dataclass(frozen=True)
class ProfileSettings:
    """k: curvatures from each end (or the whole spectrum with ``full``); at: "boundary"
    (DeepFool points) or "input"; method: "autograd" or "fd" (at scale ``h``)."""

    k: int = 20
    at: str = "boundary"
    method: str = "autograd"
    h: float | None = None
    full: bool = False


@dataclass(frozen=True)
class ProfileResult:
    """status: what this process did; table: the merged table's path when this process wrote it;
    measured: images with a boundary to measure; near_zero: share of their curvatures within 5%
    of their largest magnitude (NaN when nothing was measured or the table was not written)."""

    status: SweepStatus
    table: Path | None
    measured: int = 0
    near_zero: float = float("nan")


def profile_dataset(model: torch.nn.Module, source, out: str | os.PathLike, settings: ProfileSettings, *,
                    device=None, chunk_size: int = 32, shard: Shard | None = None, table_format: str = "parquet",
                    progress: bool = False) -> ProfileResult:
    """Profiles of every image of ``source`` (a :mod:`curvext.sweep.sources` source) in chunks of
    ``chunk_size``; a rerun computes only the missing parts. Rows: image (index), name, rank,
    curvature (ascending per image), cls, base, grad_norm, converged, error (why an image could not
    be read; its curvatures are NaN)."""
    if table_format not in ("parquet", "csv"):
        raise ValueError(f"table_format must be 'parquet' or 'csv', got {table_format!r}")
    device = torch.device(device or "cpu")
    out = Path(out)
    key = settings_key(dict(model=model_digest(model), data=source.identity(), chunk=chunk_size,
                            **settings.__dict__))
    tag = f"{settings.at}-{settings.method}-k{settings.k}-{'full' if settings.full else 'lanczos'}"
    store = PartStore(out / "parts" / f"{tag}-{key}")
    chunks = Chunks(len(source), chunk_size)
    shard = shard or Shard.from_env()
    mine = sum(len(chunks.items(i)) for i in range(chunks.count) if shard.owns(i))
    bar = progress_bar(total=mine, unit="img", desc="profiles", enabled=progress)

    def compute(items: range, heartbeat):
        frames = []
        for batch in source.batches(items, len(items), device):
            frames.append(_rows(model, source, batch, settings))
            heartbeat()
            bar.update(len(batch.indices))
        pa = optional_import("pyarrow")
        schema = pa.schema([("image", pa.int64()), ("name", pa.string()), ("rank", pa.int64()),
                            ("curvature", pa.float64()), ("cls", pa.int64()), ("base", pa.int64()),
                            ("grad_norm", pa.float64()), ("converged", pa.bool_()), ("error", pa.string())])
        frame = optional_import("pandas").concat(frames, ignore_index=True)
        return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)

    with bar:
        status = run_chunks(store, chunks, compute, shard=shard, on_skipped=bar.update)
    stop_distributed(status)
    if not status.leader:
        return ProfileResult(status, None)
    table = store.read(chunks.count).to_pandas()
    return _write_outputs(table, out, settings, table_format, status, source.sample_numel() - 1)


def _rows(model, source, batch, settings: ProfileSettings):
    """The rows of one batch; an image that could not be read gets NaN curvatures and its error."""
    pd = optional_import("pandas")
    ok = [i for i, e in enumerate(batch.errors) if not e]
    frames = []
    if ok:
        prof = principal_curvatures(model, batch.images[ok], k=settings.k, at=settings.at, method=settings.method,
                                    h=settings.h if settings.method == "fd" else None, full=settings.full)
        B, m = prof.values.shape
        index = torch.tensor([batch.indices[i] for i in ok])
        frames.append(pd.DataFrame({
            "image": index.repeat_interleave(m).numpy(),
            "name": np.repeat([source.name(int(i)) for i in index], m),
            "rank": torch.arange(m).repeat(B).numpy(),
            "curvature": prof.values.double().flatten().cpu().numpy(),
            "cls": prof.cls.repeat_interleave(m).cpu().numpy(),
            "base": prof.base.repeat_interleave(m).cpu().numpy(),
            "grad_norm": prof.grad_norm.double().repeat_interleave(m).cpu().numpy(),
            "converged": prof.converged.flatten().cpu().numpy(),
            "error": None,
        }))
    bad = [i for i, e in enumerate(batch.errors) if e]
    if bad:
        if frames:
            m = int(frames[0]["rank"].max()) + 1
        else:
            m = batch.images[0].numel() - 1 if settings.full else 2 * settings.k
        frames.append(pd.DataFrame({
            "image": np.repeat([batch.indices[i] for i in bad], m),
            "name": np.repeat([source.name(batch.indices[i]) for i in bad], m),
            "rank": np.tile(np.arange(m), len(bad)), "curvature": np.nan, "cls": -1, "base": -1,
            "grad_norm": np.nan, "converged": False, "error": np.repeat([batch.errors[i] for i in bad], m),
        }))
    return pd.concat(frames, ignore_index=True).sort_values(["image", "rank"], kind="stable", ignore_index=True)


def _write_outputs(table, out: Path, settings: ProfileSettings, table_format: str, status: SweepStatus,
                   spectrum_size: int) -> ProfileResult:
    """The table and the plot, each replaced in one step; the plot covers the images that had a
    boundary to measure."""
    path = out / f"profile.{table_format}"
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False) if table_format == "parquet" else table.to_csv(tmp, index=False)
    values = table.pivot(index="image", columns="rank", values="curvature").to_numpy()
    measured = values[~np.isnan(values).all(axis=1)]
    if len(measured) == 0:
        (out / "profile.png").unlink(missing_ok=True)  # an earlier run's plot would not be this table's
        return ProfileResult(status, path)
    with atomic_path(out / "profile.png") as tmp:
        plots.curvature_profile(measured, tmp, spectrum_size=spectrum_size,
                                title=f"principal curvatures at the {settings.at} "
                                      f"({settings.method}, {len(measured)} images)")
    near_zero = float((abs(measured) < 0.05 * abs(measured).max(axis=1, keepdims=True)).mean())
    return ProfileResult(status, path, len(measured), near_zero)
