"""curvext.training.lightning: the callback inside a real Trainer (monitor records and logs, the
training unchanged by the monitor, the penalty's update equal to a hand-written step), and the
error that names the extra when lightning is missing."""
from __future__ import annotations

import copy
import importlib
import sys

import pytest
import torch
import torch.nn.functional as F

from curvext import data
from curvext.data import zoo
from curvext.training.penalty import curvature_penalty

pl = pytest.importorskip("lightning.pytorch")
from curvext.training.lightning import CurvatureCallback  # noqa: E402  (after the skip)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")


class Classifier(pl.LightningModule):
    def __init__(self, lr=0.05, activation="smooth"):
        super().__init__()
        torch.manual_seed(0)
        self.net = zoo.build("lenet", activation, "digits")
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loader(n=96, batch=16):
    ds = data.load_digits("train")
    dataset = torch.utils.data.TensorDataset(ds.images[:n], ds.labels[:n])
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False)


class MemoryLogger(pl.loggers.logger.Logger):
    def __init__(self):
        super().__init__()
        self.rows = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))


def fit(callbacks, steps=6, logger=False, module=None):
    module = module or Classifier()
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=logger, callbacks=callbacks,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         deterministic=True, log_every_n_steps=1)
    trainer.fit(module, loader())
    return module, trainer


def test_monitor_records_logs_and_leaves_training_unchanged():
    reference, _ = fit([])
    logger = MemoryLogger()
    callback = CurvatureCallback(every=2, images=4, tol=1e-2)
    module, _ = fit([callback], logger=logger)
    history = callback.monitor.history
    assert [r["step"] for r in history] == [0, 2, 4]
    logged = [(step, m) for step, m in logger.rows if "curvature/rho_median" in m]
    assert [step for step, _ in logged] == [1, 3, 5]  # the trainer's global step after each measured batch
    assert logged[0][1]["curvature/rho_median"] == pytest.approx(history[0]["rho_median"])
    for name in ("curvature", "rho", "grad_norm"):
        assert all(torch.isfinite(torch.tensor(r[f"{name}_median"])) for r in history)
    for a, b in zip(module.parameters(), reference.parameters()):
        assert torch.equal(a, b)
    assert callback.state_dict()["calls"] == 6 and len(callback.state_dict()["history"]) == 3


def test_penalty_step_equals_a_hand_written_step():
    lam, h, lr = 100.0, 0.5, 0.05
    start = Classifier(lr, "relu")
    by_hand = copy.deepcopy(start)
    module, trainer = fit([CurvatureCallback(every=1000, images=2, penalty=lam, penalty_h=h)], steps=1,
                          module=start)
    x, y = next(iter(loader()))
    by_hand.train()
    params = list(by_hand.parameters())
    ce = torch.autograd.grad(F.cross_entropy(by_hand(x), y), params)
    pen = torch.autograd.grad(lam * curvature_penalty(by_hand, x, y, kind="cure", h=h), params)
    for p, p0, g, gp in zip(module.parameters(), params, ce, pen):
        # One SGD step from the same weights with the gradient of loss + lam * penalty; the two
        # backward passes are summed in float32 (rounding ~1e-7 of the update's size).
        torch.testing.assert_close(p, p0 - lr * (g + gp), rtol=1e-5, atol=1e-6)
    # The penalty's share of the update is far above that tolerance: the check sees it.
    assert max(float((lr * gp).abs().max()) for gp in pen) > 1e-4
    assert "curvature/penalty" in trainer.callback_metrics


def test_bad_settings():
    with pytest.raises(ValueError, match="penalty must be a weight >= 0"):
        CurvatureCallback(penalty=-1.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        CurvatureCallback(kind="trace")
    with pytest.raises(ValueError, match="every must be a positive int"):
        fit([CurvatureCallback(every=0)], steps=1)


def test_missing_lightning_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)  # import lightning now raises ImportError
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "curvext.training.lightning")
    with pytest.raises(ImportError, match=r"pip install 'curvext\[lightning\]'"):
        importlib.import_module("curvext.training.lightning")
