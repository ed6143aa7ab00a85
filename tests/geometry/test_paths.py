"""curvext.geometry.paths (Algorithm 1) on models whose regions are known in closed form: a linear
classifier (convex regions), a ring (annulus) and two disjoint discs; then a zoo CNN on digits."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from curvext.geometry.paths import FAILURE_KINDS, find_paths, polyline_points
from tests.geometry.test_deepfool import Linear


class Ring(torch.nn.Module):
    """Class 0 exactly on the annulus ``| ||x|| - 1 | < 0.25`` of the plane: logits ``(g, 0)`` with
    ``g = exp(x_2) q(||x||^2)``, ``q(u) = -(u - 0.75^2)(u - 1.25^2)``. The factor ``exp(x_2) > 0``
    leaves the region alone but gives g a non-zero gradient at the centre of the hole (any
    rotation-invariant g has none there, and DeepFool could not move from it)."""

    def forward(self, x):
        u = (x**2).sum(1)
        g = torch.exp(x[:, 1]) * -(u - 0.75**2) * (u - 1.25**2)
        return torch.stack([g, torch.zeros_like(g)], 1)


class Discs(torch.nn.Module):
    """Class 0 exactly on two disjoint discs: radius 0.5 around ``(2, 0)`` and ``r_left`` around
    ``(-2, 0)``. With equal radii the origin (the midpoint of the centres) is a point of symmetry
    where g's gradient vanishes."""

    def __init__(self, r_left=0.8):
        super().__init__()
        self.r_left = r_left

    def forward(self, x):
        a = torch.tensor([2.0, 0.0], dtype=x.dtype, device=x.device)
        g = torch.maximum(0.25 - ((x - a) ** 2).sum(1), self.r_left**2 - ((x + a) ** 2).sum(1))
        return torch.stack([g, torch.zeros_like(g)], 1)


def in_ring(points: np.ndarray) -> np.ndarray:
    return np.abs(np.linalg.norm(points, axis=1) - 1) < 0.25


def reference_statistics(points: np.ndarray, x1: np.ndarray, x2: np.ndarray):
    """Max distance of densely sampled path points to the segment [x1, x2], and the path's
    length, both over ||x1 - x2|| (float64 numpy, from the points alone)."""
    d = x2 - x1
    L = np.linalg.norm(d)
    s = np.clip((points - x1) @ d / L**2, 0, 1)
    deviation = np.linalg.norm(points - x1 - s[:, None] * d, axis=1).max() / L
    return deviation, np.linalg.norm(np.diff(points, axis=0), axis=1).sum() / L


def test_linear_classifier_keeps_the_straight_segment_in_one_forward_pass():
    model = Linear(d=6).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 6, generator=g, dtype=torch.float64) * 3
    labels = model(x).argmax(1)
    first, second = [], []
    for k in labels.unique():
        members = (labels == k).nonzero().flatten()
        first += members[:-1].tolist()
        second += members[1:].tolist()
    x1, x2 = x[first], x[second]
    calls = []
    hook = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    res = find_paths(model, x1, x2, samples_per_segment=15)
    hook.remove()
    B = len(first)
    # Regions of a linear classifier are convex: every segment stays inside, nothing is added.
    assert res.connected.all() and (res.counts == 2).all() and (res.depth == 0).all()
    assert all(a.shape == (0, 6) for a in res.anchors) and (res.n_pushed == 0).all()
    torch.testing.assert_close(res.length_ratio, torch.ones(B, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(res.max_deviation, torch.zeros(B, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(res.distance, (x1 - x2).norm(dim=1), rtol=1e-12, atol=0)
    assert torch.equal(res.vertices[:, 0], x1) and torch.equal(res.vertices[:, 1], x2)
    assert res.failures == ("",) * B and set(res.failure_kinds) == {""}
    # Batched: one pass labels both ends of every pair, one more every sampled point of every pair.
    assert calls == [2 * B, B * 16]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_ring_path_goes_around_the_hole(device):
    angle = math.radians(20)
    x1 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]], dtype=torch.float64, device=device)
    x2 = torch.tensor([[-1.0, 0.0], [math.cos(angle), math.sin(angle)], [-0.8, -0.6]], dtype=torch.float64,
                      device=device)
    # With DeepFool's minimal overshoot (0.02 of a short push) the anchors land just inside the
    # hole's edge, so chords between them must be short: the third pair needs 11 levels.
    res = find_paths(Ring().eval(), x1, x2, max_depth=12, overshoot=0.02)
    assert res.connected.all(), res.failures
    # Opposite points need anchors, some pushed out of the hole by DeepFool; the 20-degree chord
    # stays inside (its closest point to the centre is at radius cos 10 deg = 0.985).
    assert int(res.n_anchors[0]) > 0 and int(res.n_pushed[0]) > 0 and int(res.n_pushed[2]) > 0
    assert int(res.counts[1]) == 2 and int(res.depth[1]) == 0
    for i in range(3):
        # Every point of the returned polyline, sampled 50 times more densely than the search
        # did, lies in the annulus (the analytic region, float64): not only the checked ones.
        points, pos = res.polyline(i, samples_per_segment=1600)
        points = points.cpu().numpy()
        assert in_ring(points).all()
        assert pos[0] == 0 and pos[-1] == 1 and bool((pos.diff() >= 0).all())
        n = int(res.counts[i])
        np.testing.assert_array_equal(points[0], x1[i].cpu().numpy())
        np.testing.assert_array_equal(points[-1], x2[i].cpu().numpy())
        # Statistics against a reference computed from the dense points alone (the deviation is
        # largest at a vertex, and the dense samples include every vertex: equal to rounding).
        deviation, ratio = reference_statistics(points, x1[i].cpu().numpy(), x2[i].cpu().numpy())
        assert abs(float(res.max_deviation[i]) - deviation) < 1e-12
        assert abs(float(res.length_ratio[i]) - ratio) < 1e-9 * n
    # Analytic bounds for the pair across the hole: the path crosses the y-axis inside the ring,
    # at |y| > 0.75, so it deviates by more than 0.75 / 2 and is longer than 2 sqrt(1 + 0.75^2).
    assert float(res.max_deviation[0]) > 0.375
    assert float(res.length_ratio[0]) > math.sqrt(1 + 0.75**2)


def test_ring_straight_segment_only_fails_at_the_cap():
    x1 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    res = find_paths(Ring().eval(), x1, -x1, max_depth=0)
    assert not bool(res.connected[0]) and int(res.counts[0]) == 2
    assert res.failures[0].startswith("depth cap 0 reached") and res.failure_kinds == ("depth cap",)
    assert "class 0" in res.failures[0] and "label 1" in res.failures[0]


def test_disjoint_discs_are_not_connected_within_the_cap():
    x1 = torch.tensor([[2.0, 0.0], [2.0, 0.1]], dtype=torch.float64)
    x2 = torch.tensor([[-2.0, 0.0], [2.2, 0.0]], dtype=torch.float64)
    res = find_paths(Discs().eval(), x1, x2, max_depth=6)
    # The pair across the gap: every anchor lands on one disc's edge and the segment toward the
    # other disc always crosses the gap, down to the depth cap.
    assert not bool(res.connected[0]) and int(res.depth[0]) == 6
    assert res.failure_kinds[0] == "depth cap" and "still leaves class 0" in res.failures[0]
    assert int(res.n_pushed[0]) > 0
    # The pair inside one disc is connected by its straight segment.
    assert bool(res.connected[1]) and int(res.counts[1]) == 2 and res.failures[1] == ""


def test_a_midpoint_deepfool_cannot_move_is_a_deepfool_failure():
    """Equal discs: the midpoint of the centres is a critical point of g (zero gradient)."""
    x1 = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    res = find_paths(Discs(r_left=0.5).eval(), x1, -x1, max_iter=5)
    assert not bool(res.connected[0]) and res.failure_kinds == ("DeepFool",)
    assert "max_iter = 5" in res.failures[0] and "label 1" in res.failures[0]
    assert FAILURE_KINDS == ("depth cap", "DeepFool")


def test_zoo_cnn_natural_pairs_on_digits():
    """20 pairs of test digits with the same label, LeNet (softplus) from the zoo. What must hold
    whatever the model learnt: a connected pair's path has the pair's label at every point the
    search sampled (labelled here again, pair by pair), starts at x1 and ends at x2; every pushed
    anchor has the label; the statistics are those of the vertices."""
    from curvext import data
    from curvext.data import zoo

    model = zoo.train("lenet", "smooth", "digits").model.eval()
    test = data.load_digits("test")
    with torch.no_grad():
        pred = model(test.images).argmax(1)
    g = torch.Generator().manual_seed(0)
    first, second = [], []
    for a in torch.randperm(len(test), generator=g).tolist():
        same = ((pred == pred[a]) & (torch.arange(len(test)) != a)).nonzero().flatten()
        first.append(a)
        second.append(int(same[torch.randint(len(same), (1,), generator=g)]))
        if len(first) == 20:
            break
    x1, x2 = test.images[first], test.images[second]
    res = find_paths(model, x1, x2, samples_per_segment=15, max_depth=6)
    assert torch.equal(res.labels, pred[first])
    for i in range(20):
        n = int(res.counts[i])
        v = res.vertices[i, :n]
        assert torch.equal(v[0], x1[i]) and torch.equal(v[-1], x2[i])
        assert bool(res.vertices[i, n:].isnan().all())
        with torch.no_grad():
            assert bool((model(v[res.pushed[i, :n]]).argmax(1) == res.labels[i]).all())
            if res.connected[i]:
                points, _ = res.polyline(i)
                assert bool((model(points).argmax(1) == res.labels[i]).all())
            else:
                assert res.failure_kinds[i] in FAILURE_KINDS
        deviation, ratio = reference_statistics(v.flatten(1).double().numpy(), x1[i].flatten().double().numpy(),
                                                x2[i].flatten().double().numpy())
        assert abs(float(res.max_deviation[i]) - deviation) < 1e-9 and abs(float(res.length_ratio[i]) - ratio) < 1e-9
    # What the paper reports (regions connected, few anchors) is recorded in BENCHMARKS.md, not
    # asserted: it is a finding about trained models, not a property of the algorithm.


def test_polyline_points_by_hand():
    v = torch.tensor([[0.0, 0.0], [3.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    points, pos = polyline_points(v, 1)
    torch.testing.assert_close(points, torch.tensor([[0, 0], [1.5, 0], [3, 0], [3, 2], [3, 4]], dtype=torch.float64))
    torch.testing.assert_close(pos, torch.tensor([0, 1.5, 3, 5, 7], dtype=torch.float64) / 7)
    points, pos = polyline_points(torch.zeros(2, 1, 2, 2), 3)  # length 0: evenly spaced positions
    assert points.shape == (5, 1, 2, 2) and torch.equal(pos, torch.linspace(0, 1, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="samples_per_segment must be an int >= 1"):
        polyline_points(v, 0)
    with pytest.raises(ValueError, match=r"vertices must be an \(n, \*shape\) tensor"):
        polyline_points(torch.zeros(3), 2)


def test_identical_points_make_a_trivial_path():
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    res = find_paths(Ring().eval(), x, x.clone())
    assert bool(res.connected[0]) and int(res.counts[0]) == 2
    assert float(res.distance[0]) == 0 and float(res.length_ratio[0]) == 1 and float(res.max_deviation[0]) == 0
    with pytest.raises(IndexError, match=r"i must lie in \[0, 1\)"):
        res.polyline(1)


def test_bad_input():
    model = Ring().eval()
    x1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    x2 = torch.tensor([[-1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)  # the origin is class 1
    with pytest.raises(ValueError, match=r"same predicted label in every pair; pair\(s\) \[1\] differ"):
        find_paths(model, x1, x2)
    with pytest.raises(ValueError, match=r"x1 and x2 must have the same shape, got \(2, 2\) and \(1, 2\)"):
        find_paths(model, x1, x2[:1])
    with pytest.raises(ValueError, match="max_depth must be an int >= 0, got -1"):
        find_paths(model, x1[:1], -x1[:1], max_depth=-1)
    with pytest.raises(ValueError, match="samples_per_segment must be an int >= 1"):
        find_paths(model, x1[:1], -x1[:1], samples_per_segment=0)
    with pytest.raises(ValueError, match="overshoot must be a finite number >= 0"):
        find_paths(model, x1[:1], -x1[:1], overshoot=-0.1)
    with pytest.raises(ValueError, match="x1 and x2 must share dtype"):
        find_paths(model, x1, x2.float())
    with pytest.raises(ValueError, match=r"x2 must be a \(B, \*shape\) batch"):
        find_paths(model, x1, x2[:, 0])
    with pytest.raises(ValueError, match="must be in eval mode"):
        find_paths(Ring().train(), x1[:1], -x1[:1])
