"""A Lightning callback for curvature in training (``pip install 'curvext[lightning]'``).

:class:`CurvatureCallback` runs a :class:`curvext.training.monitor.CurvatureMonitor` after every
training batch (it measures every ``every`` batches, on the global-zero process only, and sends
the record to every logger of the ``Trainer``), and optionally adds ``penalty *
curvature_penalty(...)`` to the loss: in ``on_after_backward`` the penalty's own backward adds
its gradients to those of the step's loss, before the optimizer steps (scaled as Lightning
scales the loss: divided by ``accumulate_grad_batches``, multiplied by the AMP grad scaler).
The penalty takes the automatic optimization of one process; under DDP or manual optimization
add it to the loss in ``training_step`` instead.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from curvext.training.monitor import CurvatureMonitor
from curvext.training.penalty import KINDS, curvature_penalty
from curvext.utils.optional import optional_import

pl = optional_import("lightning.pytorch")


def first_two(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of a batch ``(x, y, ...)``."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError("the batch must be a tuple (x, y, ...); pass unpack=... to CurvatureCallback to read "
                         f"images and labels from a {type(batch).__name__}")
    return batch[0], batch[1]


class CurvatureCallback(pl.Callback):
    """Curvature monitoring (and an optional curvature penalty) inside a Lightning ``Trainer``.

    Args:
        every, images, k, method, h, and further keyword arguments: the monitor's
            (:class:`CurvatureMonitor`); it counts training batches.
        penalty: weight ``lam`` of the penalty added to the loss (0: none).
        kind, penalty_h, iters: the penalty's settings (:func:`curvature_penalty`'s kind, h, iters).
        model: ``model(pl_module)`` -> the classifier to measure and penalise (default: the
            LightningModule itself, whose forward must return the logits).
        unpack: ``unpack(batch)`` -> ``(images (B, C, H, W), labels (B,))`` (default: the first
            two items of the batch).

    Attributes:
        monitor: the :class:`CurvatureMonitor` (``None`` before fitting starts); its
            ``history`` holds the records, also saved in the checkpoint.
    """

    def __init__(self, *, every: int = 100, images: int = 32, k: int = 1, method: str = "auto",
                 h: float | None = None, penalty: float = 0.0, kind: str = "cure", penalty_h: float = 0.5,
                 iters: int = 4, model: Callable | None = None, unpack: Callable | None = None, **monitor_settings):
        super().__init__()
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not penalty >= 0:
            raise ValueError(f"penalty must be a weight >= 0, got {penalty!r}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.settings = dict(every=every, images=images, k=k, method=method, h=h, **monitor_settings)
        self.penalty, self.kind, self.penalty_h, self.iters = float(penalty), kind, penalty_h, iters
        self.get_model = model or (lambda module: module)
        self.unpack = unpack or first_two
        self.monitor: CurvatureMonitor | None = None
        self._restored: dict | None = None
        self._batch = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self.monitor = CurvatureMonitor(self.get_model(pl_module), **self.settings)
        if self._restored is not None:
            self.monitor.history = list(self._restored["history"])
            self.monitor.calls = int(self._restored["calls"])
        if self.penalty > 0 and not pl_module.automatic_optimization:
            raise ValueError("CurvatureCallback(penalty=...) adds the penalty under automatic optimization; with "
                             "manual optimization add curvature_penalty(...) to the loss in training_step")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch = self.unpack(batch) if self.penalty > 0 else None

    def on_after_backward(self, trainer, pl_module) -> None:
        if self._batch is None:
            return
        x, y = self._batch
        self._batch = None
        value = curvature_penalty(self.get_model(pl_module), x, y, kind=self.kind, h=self.penalty_h, iters=self.iters)
        term = self.penalty * value / trainer.accumulate_grad_batches
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        (scaler.scale(term) if scaler is not None else term).backward()
        pl_module.log("curvature/penalty", value.detach(), on_step=True, on_epoch=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        x, y = self.unpack(batch)
        record = self.monitor.step(x, y)
        if record is not None:
            metrics = {f"curvature/{name}": float(value) for name, value in record.items() if name != "step"}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def state_dict(self) -> dict:
        if self.monitor is None:
            return dict(self._restored or {"history": [], "calls": 0})
        return {"history": list(self.monitor.history), "calls": self.monitor.calls}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = {"history": list(state_dict.get("history", [])), "calls": int(state_dict.get("calls", 0))}
