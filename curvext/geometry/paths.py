"""Paths that stay inside a classification region: the paper's Algorithm 1 (docs/method.md §6).

:func:`find_paths` looks, for B pairs ``(x1, x2)`` with the same label ``c``, for a polyline from
``x1`` to ``x2`` along which every sampled point has label ``c``. It starts from the straight
segment and refines breadth-first, all pairs and all segments of a round together:

1. Every unchecked segment ``[a, b]`` is sampled at ``t = k / (S + 1)``, ``k = 1..S + 1``
   (``S = samples_per_segment``; ``t = 1`` is the segment's end vertex), and all points of all
   pairs are classified in one forward pass (in slices of ``batch_size`` points when given).
2. A segment whose points all have label ``c`` is kept. One that leaves the region is split at
   its midpoint ``m``; when ``k̂(m) ≠ c``, ``m`` is first pushed back into class ``c`` by targeted
   DeepFool (:func:`curvext.geometry.deepfool.deepfool`, one batched call for every midpoint of
   the round). The two halves are checked in the next round, one level deeper.
3. A segment that still leaves the region at level ``max_depth`` ends its pair's search
   (failure "depth cap"), as does a midpoint DeepFool cannot bring back within ``max_iter`` steps
   (failure "DeepFool").

With an odd ``S`` the sample grid of each half contains the parent's samples on that half, so a
point found outside the region stays sampled until a pushed vertex moves the path away from it.
Points are not clamped to any input range: the region is studied as a subset of ``R^d``, and
anchors (like DeepFool's points) may leave ``[0, 1]``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from curvext.geometry.deepfool import deepfool
from curvext.utils import model_checks
from curvext.utils.reprs import ShortRepr

logger = logging.getLogger(__name__)

__all__ = ["PathResult", "find_paths", "polyline_points", "SAMPLES_PER_SEGMENT", "MAX_DEPTH", "FAILURE_KINDS"]

SAMPLES_PER_SEGMENT = 31
MAX_DEPTH = 10
#: targeted DeepFool's overshoot for the anchors: well inside the class, so chords between anchors
#: rarely leave it again (DeepFool's minimal 0.02 leaves them on the boundary; docs/method.md §6)
ANCHOR_OVERSHOOT = 0.5
#: the first words of every non-empty entry of ``PathResult.failures``.
FAILURE_KINDS = ("depth cap", "DeepFool")


@dataclass(frozen=True, repr=False)
class PathResult(ShortRepr):
    """Paths for B pairs.

    vertices: ``(B, V, *shape)`` the polylines' vertices in order, ``x1`` first and ``x2`` last,
        NaN past ``counts[i]`` (``V = counts.max()``); same dtype and device as ``x1``.
    counts: ``(B,)`` int64 number of vertices, >= 2.
    pushed: ``(B, V)`` bool, the vertex is a midpoint moved back into the class by targeted
        DeepFool (False for ``x1``, ``x2``, midpoints already in the class, and padding).
    labels: ``(B,)`` int64 the pairs' common label ``c``.
    connected: ``(B,)`` bool, every sampled point of the final polyline (all vertices included)
        has label ``c``.
    depth: ``(B,)`` int64 deepest refinement level among the final segments (0: the straight
        segment).
    max_deviation: ``(B,)`` float64 the largest distance from a point of the polyline to the
        straight segment ``[x1, x2]`` (reached at a vertex), divided by ``||x1 - x2||``.
    length_ratio: ``(B,)`` float64 the polyline's length over ``||x1 - x2||`` (>= 1).
    distance: ``(B,)`` float64 ``||x1 - x2||`` (l2). For ``x1 == x2`` the ratios are 0 and 1.
    failures: B strings, ``""`` for a connected pair, else why the search stopped; each starts
        with one of :data:`FAILURE_KINDS`.
    samples_per_segment: the ``S`` the segments were checked with.
    """

    vertices: torch.Tensor
    counts: torch.Tensor
    pushed: torch.Tensor
    labels: torch.Tensor
    connected: torch.Tensor
    depth: torch.Tensor
    max_deviation: torch.Tensor
    length_ratio: torch.Tensor
    distance: torch.Tensor
    failures: tuple[str, ...]
    samples_per_segment: int

    @property
    def anchors(self) -> list[torch.Tensor]:
        """B tensors ``(n_i, *shape)``: the vertices between ``x1`` and ``x2``."""
        return [self.vertices[i, 1 : int(n) - 1] for i, n in enumerate(self.counts.tolist())]

    @property
    def n_anchors(self) -> torch.Tensor:
        """``(B,)`` int64 vertices between ``x1`` and ``x2``."""
        return self.counts - 2

    @property
    def n_pushed(self) -> torch.Tensor:
        """``(B,)`` int64 anchors placed by targeted DeepFool."""
        return self.pushed.sum(dim=1)

    @property
    def failure_kinds(self) -> tuple[str, ...]:
        """B entries of ``("",) + FAILURE_KINDS``: the first words of ``failures``."""
        return tuple(next((k for k in FAILURE_KINDS if f.startswith(k)), "") for f in self.failures)

    def polyline(self, i: int, samples_per_segment: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Points along pair ``i``'s polyline (see :func:`polyline_points`); by default with the
        ``samples_per_segment`` the search checked, so these are exactly the points it labelled."""
        if not 0 <= i < self.counts.shape[0]:
            raise IndexError(f"i must lie in [0, {self.counts.shape[0]}), got {i}")
        S = self.samples_per_segment if samples_per_segment is None else samples_per_segment
        return polyline_points(self.vertices[i, : int(self.counts[i])], S)


def polyline_points(vertices: torch.Tensor, samples_per_segment: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points along the polyline through ``vertices`` ``(n, *shape)``, n >= 1: ``(M, *shape)``
    from the first vertex to the last with ``S = samples_per_segment`` evenly spaced points
    strictly between consecutive vertices, ``M = (n - 1)(S + 1) + 1``, and their positions
    ``(M,)`` float64 in ``[0, 1]``: the fraction of the polyline's length from the first vertex
    (evenly spaced when the polyline has length 0)."""
    _check_int(samples_per_segment, "samples_per_segment", 1)
    if not isinstance(vertices, torch.Tensor) or vertices.dim() < 2 or vertices.shape[0] < 1:
        raise ValueError(f"vertices must be an (n, *shape) tensor with n >= 1, got "
                         f"{getattr(vertices, 'shape', type(vertices).__name__)}")
    S, v = samples_per_segment, vertices
    t = torch.arange(S + 1, dtype=v.dtype, device=v.device) / (S + 1)
    inner = _lerp(v[:-1], v[1:], t).flatten(0, 1)  # (n - 1)(S + 1) points, each segment's start included
    points = torch.cat([inner, v[-1:]])
    seg = (v[1:] - v[:-1]).flatten(1).double().norm(dim=1).cpu()
    start = torch.cat([seg.new_zeros(1), seg.cumsum(0)])
    pos = torch.cat([(start[:-1, None] + seg[:, None] * t.double().cpu()[None]).flatten(), start[-1:]])
    total = float(start[-1])
    pos = pos / total if total > 0 else torch.linspace(0, 1, len(points), dtype=torch.float64)
    return points, pos


def _check_int(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``(N, T, *shape)`` points ``a + t (b - a)`` for ``a, b`` ``(N, *shape)`` and ``t`` ``(T,)``;
    exact at ``t = 0`` and ``t = 1`` (torch.lerp switches ends at 1/2)."""
    w = t.view(1, -1, *([1] * (a.dim() - 1)))
    return torch.lerp(a.unsqueeze(1), b.unsqueeze(1), w)


def _classify(model, points: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    """``(N,)`` int64 labels of ``(N, *shape)`` points, ``batch_size`` at a time (None: at once)."""
    with torch.no_grad():
        step = points.shape[0] if batch_size is None else batch_size
        return torch.cat([model(points[s : s + step]).argmax(dim=1) for s in range(0, points.shape[0], step)])


def _segment_labels(model, a, b, t, batch_size) -> torch.Tensor:
    """``(N, T)`` labels of the points ``t`` along the N segments ``[a, b]``, built a slice of
    segments at a time so no more than ``batch_size`` points exist at once."""
    T = t.shape[0]
    per = a.shape[0] if batch_size is None else max(1, batch_size // T)
    out = []
    for s in range(0, a.shape[0], per):
        pts = _lerp(a[s : s + per], b[s : s + per], t).flatten(0, 1)
        out.append(_classify(model, pts, batch_size).view(-1, T))
    return torch.cat(out)


def find_paths(model: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor, *,
               samples_per_segment: int = SAMPLES_PER_SEGMENT, max_depth: int = MAX_DEPTH,
               overshoot: float = ANCHOR_OVERSHOOT, max_iter: int = 50, batch_size: int | None = None) -> PathResult:
    """Algorithm 1 for B pairs: polylines from ``x1`` to ``x2`` that stay in their class.

    Args:
        model: classifier in eval mode, ``(N, *shape) -> (N, L)`` logits.
        x1, x2: ``(B, *shape)`` floating inputs (images ``(B, C, H, W)`` or vectors ``(B, d)``),
            same shape, dtype and device; the model must give ``x1[i]`` and ``x2[i]`` the same
            label.
        samples_per_segment: S, points checked strictly inside each segment (plus its end
            vertex); odd values nest the grids of successive levels.
        max_depth: refinement levels at most (0: only the straight segment is checked).
        overshoot, max_iter: targeted DeepFool's, for the midpoints pushed back into the class.
        batch_size: points per forward pass (None: a round's points in one pass).

    Returns a :class:`PathResult`.
    """
    model_checks.require_eval(model, "model")
    model_checks.check_batch(x1, "x1")
    model_checks.check_batch(x2, "x2")
    if x1.shape != x2.shape:
        raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    if x1.dtype != x2.dtype or x1.device != x2.device:
        raise ValueError(f"x1 and x2 must share dtype and device, got {x1.dtype} on {x1.device} and "
                         f"{x2.dtype} on {x2.device}")
    _check_int(samples_per_segment, "samples_per_segment", 1)
    _check_int(max_depth, "max_depth", 0)
    _check_int(max_iter, "max_iter", 1)
    if not (isinstance(overshoot, (int, float)) and math.isfinite(overshoot) and overshoot >= 0):
        raise ValueError(f"overshoot must be a finite number >= 0, got {overshoot!r}")
    if batch_size is not None:
        _check_int(batch_size, "batch_size", 1)
    x1, x2 = x1.detach(), x2.detach()
    B = x1.shape[0]
    both = _classify(model, torch.cat([x1, x2]), batch_size)
    labels, labels2 = both[:B], both[B:]
    if bool((labels != labels2).any()):
        bad = (labels != labels2).nonzero().flatten().tolist()
        raise ValueError(f"x1 and x2 must have the same predicted label in every pair; pair(s) {bad[:10]} "
                         f"differ (labels {labels[bad[:10]].tolist()} and {labels2[bad[:10]].tolist()})")
    S = samples_per_segment
    t = torch.arange(1, S + 2, dtype=x1.dtype, device=x1.device) / (S + 1)

    verts = [[x1[i], x2[i]] for i in range(B)]
    pushed = [[False, False] for _ in range(B)]
    level = [[0] for _ in range(B)]  # per segment
    checked = [[False] for _ in range(B)]
    failures = [""] * B
    for round_ in range(max_depth + 1):
        todo = [(i, j) for i in range(B) if not failures[i] for j, ok in enumerate(checked[i]) if not ok]
        if not todo:
            break
        rows = torch.tensor([i for i, _ in todo], device=x1.device)
        a = torch.stack([verts[i][j] for i, j in todo])
        b = torch.stack([verts[i][j + 1] for i, j in todo])
        c = labels[rows]
        seg_labels = _segment_labels(model, a, b, t, batch_size)
        outside = seg_labels != c[:, None]
        leaves = outside.any(dim=1).tolist()
        logger.debug("round %d: %d segments checked, %d leave their region", round_, len(todo), sum(leaves))
        split = []
        for n, (i, j) in enumerate(todo):
            if not leaves[n]:
                checked[i][j] = True
            elif round_ == max_depth:
                if not failures[i]:
                    k = int(outside[n].nonzero()[0])
                    failures[i] = (f"depth cap {max_depth} reached: a segment still leaves class {int(c[n])} "
                                   f"(its point at t = {float(t[k]):.3g} has label {int(seg_labels[n, k])})")
            else:
                split.append(n)
        if not split:
            continue
        idx = torch.tensor(split, device=x1.device)
        mids = torch.lerp(a[idx], b[idx], 0.5)
        mid_labels = _classify(model, mids, batch_size)
        need = (mid_labels != c[idx]).nonzero().flatten()
        ok = torch.ones(len(split), dtype=torch.bool, device=x1.device)
        if need.numel():
            # Labelled again as DeepFool will label them (one batch of exactly these points): a
            # midpoint on a tie could change label with the batch, and DeepFool refuses a target
            # that is already the label.
            with torch.no_grad():
                need = need[model(mids[need]).argmax(dim=1) != c[idx][need]]
        if need.numel():
            df = deepfool(model, mids[need], overshoot=overshoot, max_iter=max_iter, target=c[idx][need])
            mids[need] = df.perturbed.to(mids.dtype)
            ok[need] = df.converged
        was_pushed = torch.zeros(len(split), dtype=torch.bool)
        was_pushed[need.cpu()] = True
        ok, mid_list = ok.tolist(), list(mids.unbind(0))
        # Insert from the last segment of each pair backwards, so earlier indices stay valid.
        for s in sorted(range(len(split)), key=lambda s: todo[split[s]], reverse=True):
            i, j = todo[split[s]]
            if failures[i]:
                continue
            if not ok[s]:
                failures[i] = (f"DeepFool could not push a midpoint (label {int(mid_labels[s])}) back into class "
                               f"{int(labels[i])} within max_iter = {max_iter} steps (level {level[i][j] + 1})")
                continue
            verts[i].insert(j + 1, mid_list[s])
            pushed[i].insert(j + 1, bool(was_pushed[s]))
            level[i][j] += 1
            level[i].insert(j + 1, level[i][j])
            checked[i][j] = False
            checked[i].insert(j + 1, False)
    return _result(x1, x2, verts, pushed, level, checked, labels, failures, S)


def _result(x1, x2, verts, pushed, level, checked, labels, failures, S) -> PathResult:
    B = x1.shape[0]
    counts = torch.tensor([len(v) for v in verts], dtype=torch.long)
    V = int(counts.max())
    vertices = x1.new_full((B, V) + tuple(x1.shape[1:]), float("nan"))
    pushed_t = torch.zeros(B, V, dtype=torch.bool)
    for i in range(B):
        vertices[i, : len(verts[i])] = torch.stack(verts[i])
        pushed_t[i, : len(verts[i])] = torch.tensor(pushed[i])
    connected = torch.tensor([not f and all(ch) for f, ch in zip(failures, checked)])
    depth = torch.tensor([max(lv) for lv in level], dtype=torch.long)
    deviation, ratio, distance = _shape_statistics(x1, x2, verts)
    dev = x1.device
    return PathResult(vertices, counts.to(dev), pushed_t.to(dev), labels, connected.to(dev), depth.to(dev),
                      deviation.to(dev), ratio.to(dev), distance.to(dev), tuple(failures), S)


def _shape_statistics(x1, x2, verts):
    """``(B,)`` float64 max deviation / distance, length / distance, and distance ``||x1 - x2||``.

    The distance to the segment ``[x1, x2]`` is convex along each straight piece, so its largest
    value on the polyline is at a vertex."""
    deviation, ratio, distance = [], [], []
    for i, vs in enumerate(verts):
        p = torch.stack(vs).flatten(1).double()
        d = (x2[i].double() - x1[i].double()).flatten()  # in float64: no rounding of the input's dtype
        L = d.norm()
        if float(L) == 0.0:
            deviation.append(0.0)
            ratio.append(1.0)
            distance.append(0.0)
            continue
        rel = p - x1[i].flatten().double()
        s = (rel @ d / L**2).clamp(0, 1)
        dist = (rel - s[:, None] * d).norm(dim=1)
        deviation.append(float(dist.max() / L))
        ratio.append(float((p[1:] - p[:-1]).norm(dim=1).sum() / L))
        distance.append(float(L))
    as_t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return as_t(deviation), as_t(ratio), as_t(distance)
