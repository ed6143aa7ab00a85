"""curvext.training.monitor: the monitor's numbers against the library's own functions and
independent references, a training run unchanged bit for bit, records, writer, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import curvext
from curvext import data
from curvext.data import zoo
from curvext.detection.config import DEFAULT_SCALE
from curvext.geometry.profiles import principal_curvatures
from curvext.training import monitor as monitor_module
from curvext.training.monitor import CurvatureMonitor, resolve_methods, summarize


def digits_batch(n=12, dtype=torch.float32):
    ds = data.load_digits("test")
    return ds.images[:n].to(dtype), ds.labels[:n]


def per_image_loss_grad_norms(model, x, y):
    """``||grad_x CE(f(x_b), y_b)||`` image by image (an independent loop)."""
    out = []
    for b in range(x.shape[0]):
        xb = x[b:b + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xb), y[b:b + 1]), xb)
        out.append(g.norm())
    return torch.stack(out)


@pytest.mark.parametrize("activation", ["smooth", "relu"])
def test_numbers_match_principal_curvatures_detector_and_a_per_image_loop(activation):
    torch.manual_seed(3)
    model = zoo.build("lenet", activation, "digits").double()  # random weights, float64
    x, y = digits_batch(10, torch.float64)
    mon = CurvatureMonitor(model, every=1, images=8, tol=1e-10)
    exact = activation == "smooth"
    assert mon.methods == (("autograd", "autograd") if exact else ("fd", "fd2"))
    model.train()
    values = mon.values(x, y)
    record = mon.measure(x, y, step=7)
    model.eval()
    xs, ys = x[:8], y[:8]
    method = "autograd" if exact else "fd"
    h = None if exact else DEFAULT_SCALE
    if exact:  # largest |principal curvature| at the inputs: the dense tangent spectrum of the same pair
        want = principal_curvatures(model, xs, at="input", full=True, method=method).values.abs().amax(dim=1)
        # Lanczos at tol 1e-10 on a 63-dimensional operator: the top Ritz value to ~1e-10 relative.
        torch.testing.assert_close(values["curvature"], want, rtol=1e-8, atol=0)
    # principal_curvatures at the same 20 Lanczos steps (a tolerance never met) from the same start:
    # the same Krylov space and Ritz values, so its ends hold the monitor's largest magnitude. This
    # also covers fd on the ReLU net, whose finite-difference products are not linear in the vector
    # (no dense spectrum to compare with).
    fixed = CurvatureMonitor(model, images=8, tol=1e-30, max_steps=20, measures=("curvature",)).values(x)
    ends = principal_curvatures(model, xs, k=1, at="input", method=method, h=h, tol=1e-30, max_steps=20).values
    torch.testing.assert_close(fixed["curvature"], ends.abs().amax(dim=1), rtol=1e-12, atol=0)
    # Algorithm 2's rho: the detector's score on the same images (the same settings).
    det = curvext.CurvatureDetector(model, num_directions=16, method="autograd" if exact else "fd2",
                                    h=None if exact else DEFAULT_SCALE, input_range=None)
    torch.testing.assert_close(values["rho"], det.score(xs).rho, rtol=0, atol=0)
    # Loss-gradient norms: one image at a time (batched vs unbatched: rounding only, float64).
    torch.testing.assert_close(values["grad_norm"], per_image_loss_grad_norms(model, xs, ys), rtol=1e-10, atol=0)
    # The record: numpy's median and max of the same values.
    assert record["step"] == 7 and record["images"] == 8 and record["seconds"] > 0
    for name in ("curvature", "rho", "grad_norm"):
        v = values[name].numpy()
        assert record[f"{name}_median"] == pytest.approx(np.median(v), rel=1e-12)
        assert record[f"{name}_max"] == pytest.approx(v.max(), rel=1e-12)


def test_numbers_follow_the_weights_as_they_train():
    """Nothing cached goes stale: after optimizer steps the monitor measures the new weights."""
    torch.manual_seed(0)
    model = zoo.build("lenet", "smooth", "digits")
    x, y = digits_batch(16)
    mon = CurvatureMonitor(model, images=6, measures=("curvature", "rho"), tol=1e-6)
    before = mon.values(x, y)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    after = mon.values(x, y)
    fresh = CurvatureMonitor(model, images=6, measures=("curvature", "rho"), tol=1e-6).values(x, y)
    assert not torch.equal(before["rho"], after["rho"])
    torch.testing.assert_close(after["rho"], fresh["rho"], rtol=0, atol=0)
    torch.testing.assert_close(after["curvature"], fresh["curvature"], rtol=0, atol=0)


class SmallNet(nn.Module):
    """BatchNorm (running statistics), dropout (global RNG), a frozen layer and a sub-module
    kept in eval mode: everything a measurement could disturb."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Conv2d(1, 4, 3, padding=1)
        self.frozen.requires_grad_(False)
        self.body = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Softplus(),
                                  nn.Dropout(0.3), nn.Flatten(), nn.Linear(8 * 64, 10))
        self.side = nn.Dropout(0.5)

    def forward(self, x):
        return self.body(self.frozen(x))


def train_run(monitor_every=None, between=None, steps=6):
    """Parameters, buffers and optimizer state after ``steps`` seeded steps; the monitor (or
    ``between``) is called between backward and the optimizer step, where ``.grad`` is live."""
    with torch.random.fork_rng():
        torch.manual_seed(11)
        model = SmallNet()
        model.train()
        model.side.eval()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        x_all, y_all = digits_batch(steps * 16)
        mon = CurvatureMonitor(model, every=monitor_every, images=5) if monitor_every else None
        for s in range(steps):
            x, y = x_all[s * 16:(s + 1) * 16], y_all[s * 16:(s + 1) * 16]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            if mon is not None:
                mon.step(x, y)
            if between is not None:
                between(model)
            opt.step()
        assert model.training and model.body.training and not model.side.training
        assert not any(p.requires_grad for p in model.frozen.parameters())
        state = {k: v.clone() for k, v in model.state_dict().items()}
        return state, opt.state_dict(), (mon.history if mon else [])


def test_training_is_bit_for_bit_the_same_with_the_monitor():
    reference, ref_opt, _ = train_run()
    for every in (1, 2):
        state, opt_state, history = train_run(monitor_every=every)
        assert [r["step"] for r in history] == list(range(0, 6, every))
        assert state.keys() == reference.keys()
        for name in reference:  # parameters and BatchNorm running statistics
            assert torch.equal(state[name], reference[name]), name
        for i, s in ref_opt["state"].items():
            assert torch.equal(opt_state["state"][i]["exp_avg"], s["exp_avg"])
            assert torch.equal(opt_state["state"][i]["exp_avg_sq"], s["exp_avg_sq"])


def test_the_bit_for_bit_comparison_sees_a_disturbance():
    """The comparison above can fail: a measurement that drew from the global RNG (dropout's)
    or ran a batch through BatchNorm in train mode would change the run."""
    reference, _, _ = train_run()
    drew, _, _ = train_run(between=lambda model: torch.rand(1))
    ran, _, _ = train_run(between=lambda model: model(torch.rand(4, 1, 8, 8)))
    for changed in (drew, ran):
        assert any(not torch.equal(changed[k], reference[k]) for k in reference)


def test_state_is_restored_after_an_exception(monkeypatch):
    model = SmallNet().train()
    grads = []
    for p in model.parameters():
        p.grad = torch.ones_like(p)
        grads.append(p.grad)
    mon = CurvatureMonitor(model, measures=("rho",))

    def broken(*args, **kwargs):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        raise RuntimeError("boom")

    monkeypatch.setattr(monitor_module, "score_images", broken)
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="boom"):
        mon.step(digits_batch(4)[0])
    assert model.training and model.body.training
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True, True, True, True, True]
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))
    assert torch.equal(torch.get_rng_state(), state)


class Recorder:
    def __init__(self):
        self.calls = []

    def add_scalar(self, tag, value, step):
        self.calls.append((tag, value, step))


def test_history_writer_callback_and_frame():
    torch.manual_seed(0)
    model = zoo.build("lenet", "relu", "digits")
    x, y = digits_batch(8)
    writer, seen = Recorder(), []
    mon = CurvatureMonitor(model, every=3, images=4, writer=writer, callback=seen.append, measures=("grad_norm",))
    returned = [mon.step(x, y) for _ in range(7)]
    assert [r is not None for r in returned] == [True, False, False, True, False, False, True]
    assert [r["step"] for r in mon.history] == [0, 3, 6] and seen == mon.history
    assert {tag for tag, _, _ in writer.calls} == {"curvature/images", "curvature/seconds",
                                                   "curvature/grad_norm_median", "curvature/grad_norm_max"}
    assert sorted({step for _, _, step in writer.calls}) == [0, 3, 6]
    assert mon.step(x, y, step=9) is not None and mon.step(x, y, step=10) is None
    frame = mon.frame()
    assert list(frame["step"]) == [0, 3, 6, 9]
    assert set(frame.columns) == {"step", "images", "seconds", "grad_norm_median", "grad_norm_max"}


def test_tensorboard_summary_writer(tmp_path):
    tensorboard = pytest.importorskip("torch.utils.tensorboard")
    torch.manual_seed(0)
    model = zoo.build("lenet", "smooth", "digits")
    writer = tensorboard.SummaryWriter(str(tmp_path))
    mon = CurvatureMonitor(model, every=1, images=3, writer=writer, measures=("grad_norm", "rho"))
    mon.step(digits_batch(3)[0])
    writer.close()
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())


def test_method_resolution():
    relu, smooth = zoo.build("lenet", "relu"), zoo.build("lenet", "smooth")
    assert resolve_methods(relu, "auto") == ("fd", "fd2")
    assert resolve_methods(smooth, "auto") == ("autograd", "autograd")
    assert resolve_methods(relu, "fd2") == ("fd", "fd2")
    assert resolve_methods(smooth, "fd") == ("fd", "fd")
    with pytest.raises(ValueError, match="method must be"):
        resolve_methods(smooth, "exact")


def test_summarize_skips_nan_and_averages_the_middle_pair():
    assert summarize(torch.tensor([4.0, float("nan"), 1.0, 2.0, 3.0])) == (2.5, 4.0)
    median, top = summarize(torch.tensor([float("nan")]))
    assert np.isnan(median) and np.isnan(top)


def test_bad_input_is_refused_by_name():
    model = zoo.build("lenet", "smooth")
    frozen = zoo.build("lenet", "smooth").requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters that require grad"):
        CurvatureMonitor(frozen)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        CurvatureMonitor(lambda x: x)
    for every in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="every must be a positive int"):
            CurvatureMonitor(model, every=every)
    for name, value in (("images", 0), ("k", 0), ("directions", 0)):
        with pytest.raises(ValueError, match=f"{name} must be a positive int"):
            CurvatureMonitor(model, **{name: value})
    with pytest.raises(ValueError, match="h must be a positive finite"):
        CurvatureMonitor(model, h=-1.0)
    with pytest.raises(ValueError, match="measures must be"):
        CurvatureMonitor(model, measures=("curvature", "loss"))
    with pytest.raises(TypeError, match="writer must have an add_scalar"):
        CurvatureMonitor(model, writer=object())
    mon = CurvatureMonitor(model, every=1)
    x, y = digits_batch(4)
    with pytest.raises(ValueError, match="empty batch"):
        mon.step(x[:0])
    bad = x.clone()
    bad[2, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x must be finite; non-finite values in image\(s\) \[2\]"):
        mon.step(bad)
    with pytest.raises(ValueError, match="x must be a \\(B, C, H, W\\) batch"):
        mon.step(x.flatten(1))
    with pytest.raises(ValueError, match="y must be None or a \\(B,\\)"):
        mon.step(x, y[:3])
    with pytest.raises(ValueError, match="step must be None or an int"):
        mon.step(x, y, step=-1)


def test_power_iteration_takes_over_when_lanczos_fails(monkeypatch, caplog):
    torch.manual_seed(3)
    model = zoo.build("lenet", "smooth", "digits").double().eval()
    x, _ = digits_batch(4, torch.float64)

    def failing(*args, **kwargs):
        raise FloatingPointError("non-finite Hessian-vector product for sample(s) [1]")

    monkeypatch.setattr(monitor_module, "lanczos", failing)
    got = CurvatureMonitor(model, images=4, tol=1e-12, max_steps=500, measures=("curvature",)).values(x)["curvature"]
    assert "power iteration instead" in caplog.text
    # Power iteration to tol 1e-12 on these 63-dimensional operators, whose two largest
    # magnitudes are at least 3% apart (checked): the dominant value to ~1e-9 relative.
    dense = principal_curvatures(model, x, at="input", full=True).values.abs().sort(dim=1).values
    assert bool((dense[:, -2] < 0.97 * dense[:, -1]).all())
    torch.testing.assert_close(got, dense[:, -1], rtol=1e-7, atol=0)
