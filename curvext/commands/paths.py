"""``curvext paths``: are classification regions connected? The paper's Algorithm 1
(:func:`curvext.geometry.paths.find_paths`, docs/method.md §6) on pairs drawn from a dataset.

Three kinds of pairs, each two points with the same label c:

* ``natural``: two test images the model classifies correctly as c.
* ``adversarial``: a PGD image (l-infinity, ``--eps``) whose label became c, and a test image of
  class c (not the one attacked).
* ``noise``: a test image of class c, and a uniform-noise image pushed into class c by targeted
  DeepFool with overshoot ``--noise-overshoot`` (unclamped; one already in class c is kept as it
  is), so ``--overshoot`` changes the anchors of the same pairs.

Writes ``paths.parquet`` (or .csv), one row per pair (kind, pair, source1, source2, label,
connected, anchors, pushed, depth, max_deviation, length_ratio, distance, failure), and
``paths.png``, the label margin ``f_c - max_other`` along ``--plot-paths`` paths of each kind
(those with anchors first) next to their straight segments, and prints a table with a row per kind. The pairs of each
kind (``pairs/``) and the paths, in chunks of ``--chunk`` pairs (``parts/``), are saved as they
finish, under names keyed by the model's weights, the images and the settings, so a killed run
resumes where it stopped and another model or setting in the same folder never reads them.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from curvext.adversarial.attacks import pgd
from curvext.commands.arg_types import (
    choice_list,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from curvext.commands.model_source import (
    add_data_arguments,
    add_zoo_model_arguments,
    load_command_model,
    load_test_images,
)
from curvext.commands.placement import add_device_argument, resolve_device
from curvext.commands.sweep_options import add_table_output_arguments
from curvext.evaluation import plots
from curvext.geometry.deepfool import deepfool
from curvext.geometry.paths import (
    ANCHOR_OVERSHOOT,
    FAILURE_KINDS,
    MAX_DEPTH,
    SAMPLES_PER_SEGMENT,
    find_paths,
    polyline_points,
)
from curvext.utils.atomic_files import atomic_path
from curvext.utils.cache_keys import model_digest, settings_key, tensor_digest
from curvext.utils.optional import optional_import

logger = logging.getLogger(__name__)

KINDS = ("natural", "adversarial", "noise")
PART_FORMAT = 1  # in every part's key: a change of what a part holds never reads old parts
LABEL_TIE = ("labels differ",)  # the command's own failure: a pair's ends labelled apart (see _find_chunk)
PGD_BATCH = 256  # images attacked at a time, until enough adversarial pairs are found
COLUMNS = ("kind", "pair", "source1", "source2", "label", "connected", "anchors", "pushed", "depth",
           "max_deviation", "length_ratio", "distance", "failure")


def add_parser(sub) -> None:
    p = sub.add_parser("paths", help="Algorithm 1: paths between same-label points inside their region")
    add_data_arguments(p)
    add_zoo_model_arguments(p, "relu")
    p.add_argument("--images", type=positive_int, default=500, help="test images the pairs are drawn from")
    p.add_argument("--kinds", type=choice_list(KINDS), default=KINDS, metavar="natural,adversarial,noise",
                   help="kinds of pairs (default: all three)")
    p.add_argument("--pairs", type=positive_int, default=100, help="pairs of each kind")
    p.add_argument("--samples", type=positive_int, default=SAMPLES_PER_SEGMENT,
                   help=f"points checked inside each segment (default {SAMPLES_PER_SEGMENT}; odd values nest)")
    p.add_argument("--max-depth", type=non_negative_int, default=MAX_DEPTH,
                   help=f"refinement levels at most (default {MAX_DEPTH}; 0: straight segments only)")
    p.add_argument("--overshoot", type=non_negative_float, default=ANCHOR_OVERSHOOT,
                   help="targeted DeepFool's overshoot for the anchors (larger: anchors deeper inside the class, "
                        "fewer levels needed; docs/method.md §6)")
    p.add_argument("--max-iter", type=positive_int, default=50, help="targeted DeepFool's steps at most")
    p.add_argument("--noise-overshoot", type=non_negative_float, default=0.02,
                   help="targeted DeepFool's overshoot when it pushes noise images into a class (noise pairs)")
    p.add_argument("--eps", type=positive_float, default=0.1, help="PGD l-infinity radius for adversarial pairs")
    p.add_argument("--pgd-steps", type=positive_int, default=40)
    p.add_argument("--seed", type=int, default=0, help="seeds the pairs, the noise and PGD's random starts")
    p.add_argument("--chunk", type=positive_int, default=25, help="pairs per saved part")
    p.add_argument("--batch-size", type=positive_int, default=8192, help="points per forward pass")
    p.add_argument("--plot-paths", type=non_negative_int, default=3,
                   help="paths of each kind in the plot, those with anchors first (default 3; 0: no plot)")
    add_table_output_arguments(p, "curvext-out/paths")
    add_device_argument(p)
    p.set_defaults(func=run)


def _images(args):
    return load_test_images(args, args.images)


def _predict(model, x, batch: int = 1024) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[s : s + batch]).argmax(1) for s in range(0, len(x), batch)])


def _partner(pred, natural, c: int, exclude: int, gen) -> int:
    """A random natural image of class c other than ``exclude``; -1 when there is none."""
    pool = (natural & (pred == c)).nonzero().flatten()
    pool = pool[pool != exclude]
    return -1 if len(pool) == 0 else int(pool[torch.randint(len(pool), (1,), generator=gen)])


def build_pairs(kind: str, model, images, labels, args, device) -> dict:
    """Up to ``args.pairs`` pairs of ``kind``: ``x1``, ``x2`` ``(n, C, H, W)`` on the CPU, and
    ``source1``, ``source2`` (indices into ``images``; -1 for noise) and ``label`` ``(n,)`` int64."""
    gen = torch.Generator().manual_seed(args.seed * len(KINDS) + KINDS.index(kind))
    pred = _predict(model, images.to(device)).cpu()
    natural = (labels == pred) | (labels < 0)  # unlabelled folders: the model's prediction
    order = natural.nonzero().flatten()[torch.randperm(int(natural.sum()), generator=gen)].tolist()
    src1, src2, x2 = [], [], []
    if kind == "natural":
        for attempt in range(4 * args.pairs if order else 0):  # images are reused when pairs > images
            a = order[attempt % len(order)]
            b = _partner(pred, natural, int(pred[a]), a, gen)
            if b >= 0:
                src1.append(a)
                src2.append(b)
            if len(src1) == args.pairs:
                break
        x2 = images[src2]
    elif kind == "adversarial":
        source = torch.tensor(order, dtype=torch.long)
        for start in range(0, len(source), PGD_BATCH):
            batch = source[start : start + PGD_BATCH]
            adv = pgd(model, images[batch].to(device), eps=args.eps, norm="linf", steps=args.pgd_steps,
                      seed=args.seed + start)
            for s in adv.success.nonzero().flatten().tolist():
                a = _partner(pred, natural, int(adv.adv_labels[s]), int(batch[s]), gen)
                if a >= 0 and len(src1) < args.pairs:
                    src1.append(a)
                    src2.append(int(batch[s]))
                    x2.append(adv.adversarial[s].cpu())
            if len(src1) == args.pairs:
                break
        x2 = torch.stack(x2) if x2 else images[:0]
    else:
        noise = torch.rand((args.pairs,) + tuple(images.shape[1:]), generator=gen, dtype=images.dtype)
        src1 = [order[int(torch.randint(len(order), (1,), generator=gen))] for _ in range(args.pairs)] if order else []
        target = pred[src1]
        noise = noise[: len(src1)]
        move = (_predict(model, noise.to(device)).cpu() != target).nonzero().flatten()
        keep = torch.ones(len(src1), dtype=torch.bool)
        if len(move):
            df = deepfool(model, noise[move].to(device), target=target[move].to(device),
                          overshoot=args.noise_overshoot, max_iter=args.max_iter)
            noise[move] = df.perturbed.detach().cpu()
            keep[move] = df.converged.cpu()
        src1 = [s for s, k in zip(src1, keep.tolist()) if k]
        x2, src2 = noise[keep], [-1] * len(src1)
    src1 = torch.tensor(src1, dtype=torch.long)
    return dict(x1=images[src1], x2=x2, source1=src1, source2=torch.tensor(src2, dtype=torch.long),
                label=pred[src1])


def _load_or_build_pairs(kind, model, ds, args, device, out: Path, digest: str) -> dict:
    settings = dict(kind=kind, model=digest, images=tensor_digest(ds.images), pairs=args.pairs, seed=args.seed)
    if kind == "adversarial":
        settings.update(eps=args.eps, pgd_steps=args.pgd_steps)
    if kind == "noise":
        settings.update(noise_overshoot=args.noise_overshoot, max_iter=args.max_iter)
    path = out / "pairs" / f"{kind}-{settings_key(settings)}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    pairs = build_pairs(kind, model, ds.images, ds.labels, args, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(pairs, tmp)
    return pairs


def _labels_as_find_paths_sees_them(model, x1, x2, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The labels of x1 and x2 from the same batches find_paths labels them in (``cat([x1, x2])``
    in slices of ``batch_size``): a point within float rounding of the boundary can change label
    with the batch, and find_paths refuses a pair whose ends differ."""
    both = _predict(model, torch.cat([x1, x2]), batch_size)
    return both[: len(x1)], both[len(x1) :]


def _find_chunk(model, pairs: dict, start: int, kind: str, args, device) -> dict:
    """One part: the table's rows and the polylines of pairs ``start..`` of ``kind``: ``vertices``
    ``(sum(counts), *shape)``, pair after pair, ``counts[i]`` of them for pair i. A pair whose
    ends get different labels here (a tie at the boundary) keeps its straight segment and the
    failure "labels differ"."""
    end = start + args.chunk
    x1, x2 = pairs["x1"][start:end].to(device), pairs["x2"][start:end].to(device)
    l1, l2 = _labels_as_find_paths_sees_them(model, x1, x2, args.batch_size)
    same = (l1 == l2).cpu()
    n = len(x1)
    rows = dict(kind=[kind] * n, pair=list(range(start, start + n)), source1=pairs["source1"][start:end].tolist(),
                source2=pairs["source2"][start:end].tolist(), label=l1.tolist(), connected=[False] * n,
                anchors=[0] * n, pushed=[0] * n, depth=[0] * n, max_deviation=[0.0] * n, length_ratio=[1.0] * n,
                distance=(x2 - x1).flatten(1).double().norm(dim=1).tolist(),
                failure=[f"labels differ: {int(a)} and {int(b)} (an end at the boundary)" for a, b in zip(l1, l2)])
    counts, vertices = [2] * n, [torch.stack([x1[i], x2[i]]) for i in range(n)]
    if bool(same.any()):
        ok = same.nonzero().flatten().tolist()
        res = find_paths(model, x1[ok], x2[ok], samples_per_segment=args.samples, max_depth=args.max_depth,
                         overshoot=args.overshoot, max_iter=args.max_iter, batch_size=args.batch_size)
        for r, i in enumerate(ok):
            for column, values in (("connected", res.connected), ("anchors", res.n_anchors),
                                   ("pushed", res.n_pushed), ("depth", res.depth),
                                   ("max_deviation", res.max_deviation), ("length_ratio", res.length_ratio),
                                   ("distance", res.distance)):
                rows[column][i] = values[r].item()
            rows["failure"][i] = res.failures[r]
            counts[i] = int(res.counts[r])
            vertices[i] = res.vertices[r, : counts[i]]
    # The vertices of every pair one after another (no padding), ``counts`` of them each.
    return dict(rows=rows, vertices=torch.cat(vertices).cpu(), counts=torch.tensor(counts))


def run(args) -> int:
    pd = optional_import("pandas")
    tqdm = optional_import("tqdm.auto").tqdm

    device = resolve_device(args.device)
    model = load_command_model(args, device)
    ds = _images(args)
    out = Path(args.out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    digest = model_digest(model)
    search = dict(part_format=PART_FORMAT, model=digest, samples=args.samples, max_depth=args.max_depth,
                  overshoot=args.overshoot, max_iter=args.max_iter)
    pairs = {kind: _load_or_build_pairs(kind, model, ds, args, device, out, digest) for kind in args.kinds}
    for kind, p in pairs.items():
        if len(p["x1"]) < args.pairs:
            print(f"{kind}: {len(p['x1'])} of the {args.pairs} pairs asked for could be formed from {len(ds)} images")
    todo = []
    for kind, p in pairs.items():
        for start in range(0, len(p["x1"]), args.chunk):
            x1, x2 = p["x1"][start : start + args.chunk], p["x2"][start : start + args.chunk]
            key = settings_key(dict(search, x1=tensor_digest(x1), x2=tensor_digest(x2)))
            todo.append((kind, start, out / "parts" / f"{kind}-{start:05d}-{key}.pt"))
    for kind, start, path in tqdm(todo, desc="paths", disable=args.no_progress):
        if not path.is_file():
            part = _find_chunk(model, pairs[kind], start, kind, args, device)
            with atomic_path(path) as tmp:  # a killed run never leaves half a part
                torch.save(part, tmp)
    parts = [(kind, torch.load(path, weights_only=True)) for kind, _, path in todo]
    table = pd.DataFrame({c: [v for _, part in parts for v in part["rows"][c]] for c in COLUMNS})
    table_path = out / f"paths.{args.format}"
    with atomic_path(table_path) as tmp:
        table.to_parquet(tmp, index=False) if args.format == "parquet" else table.to_csv(tmp, index=False)
    written = [table_path]
    if args.plot_paths:
        written.append(_plot(model, parts, pairs, args, out / "paths.png", device))
    else:
        (out / "paths.png").unlink(missing_ok=True)  # an earlier run's plot would not be this table's
    print(summary(table, args.kinds))
    capped = int(table["failure"].str.startswith("depth cap").sum())
    if capped:
        larger = " (1 connected every pair of the zoo's ReLU NiN)" if args.overshoot < 1 else ""
        print(f"\n{capped} pair(s) stopped at the depth cap {args.max_depth}. Anchors pushed with overshoot "
              f"{args.overshoot:g} can sit close to the boundary, and chords between them leave the region again "
              f"(docs/method.md §6): a larger --overshoot{larger} or --max-depth may connect them.")
    print("\nwrote " + " and ".join(str(p) for p in written))
    return 0


def summary(table, kinds) -> str:
    """Markdown table, one row per kind of pair: the shares connected and connected by the
    straight segment; anchors, pushed anchors, depth, deviation and length over the connected
    pairs; failures by reason."""
    lines = ["| kind | pairs | connected | straight | anchors mean / median / max | pushed mean | depth max | "
             "max deviation median / max | length ratio median / max | failures |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for kind in kinds:
        t = table[table["kind"] == kind]
        ok = t[t["connected"]]
        if len(t) == 0:
            lines.append(f"| {kind} | 0 | | | | | | | | |")
            continue
        failures = ", ".join(f"{k}: {int(t['failure'].str.startswith(k).sum())}" for k in FAILURE_KINDS + LABEL_TIE
                             if t["failure"].str.startswith(k).any()) or "none"
        stats = ("| | | | | |" if len(ok) == 0 else
                 f"| {ok['anchors'].mean():.2f} / {ok['anchors'].median():.0f} / {ok['anchors'].max()} | "
                 f"{ok['pushed'].mean():.2f} | {ok['depth'].max()} | "
                 f"{ok['max_deviation'].median():.3f} / {ok['max_deviation'].max():.3f} | "
                 f"{ok['length_ratio'].median():.3f} / {ok['length_ratio'].max():.3f} |")
        straight = 100 * (ok["anchors"] == 0).sum() / len(t)
        lines.append(f"| {kind} | {len(t)} | {100 * len(ok) / len(t):.0f}% | {straight:.0f}% {stats} {failures} |")
    return "\n".join(lines)


def _margins(model, points, label: int, batch_size: int) -> np.ndarray:
    with torch.no_grad():
        logits = torch.cat([model(points[s : s + batch_size]) for s in range(0, len(points), batch_size)])
    others = logits.clone()
    others[:, label] = float("-inf")
    return (logits[:, label] - others.amax(1)).double().cpu().numpy()


def plot_choice(rows: list[tuple[int, bool, int]], n: int) -> list[int]:
    """The ``n`` pairs of a kind to plot, from ``(pair, connected, anchors)`` rows: connected paths
    with anchors first (most anchors first), then failed ones, then straight segments, each group
    in pair order."""
    group = {pair: (0 if ok and a > 0 else 1 if not ok else 2, -a if ok else 0) for pair, ok, a in rows}
    return sorted(group, key=lambda pair: (*group[pair], pair))[:n]


def _plot(model, parts, pairs, args, path: Path, device) -> Path:
    """``--plot-paths`` paths of each kind (see :func:`plot_choice`): the margin along the path
    and along the straight segment."""
    where = {}  # (kind, pair) -> (part, row)
    for kind, part in parts:
        for i, pair in enumerate(part["rows"]["pair"]):
            where[kind, pair] = (part, i)
    panels = {}
    for kind in pairs:
        rows = [(pair, part["rows"]["connected"][i], part["rows"]["anchors"][i])
                for (k, pair), (part, i) in where.items() if k == kind]
        panels[kind] = []
        for pair in plot_choice(rows, args.plot_paths):
            part, i = where[kind, pair]
            start = int(part["counts"][:i].sum())
            vertices = part["vertices"][start : start + int(part["counts"][i])].to(device)
            label = part["rows"]["label"][i]
            points, pos = polyline_points(vertices, args.samples)
            straight, spos = polyline_points(vertices[[0, -1]], 4 * args.samples)
            name = f"pair {pair} ({part['rows']['anchors'][i]} anchors)"
            panels[kind].append((name, pos.numpy(), _margins(model, points, label, args.batch_size), spos.numpy(),
                                 _margins(model, straight, label, args.batch_size)))
    with atomic_path(path) as tmp:
        plots.path_margins(panels, tmp, title="label margin along paths (Algorithm 1; paths with anchors first)")
    return path
