"""Built-in model zoo: small LeNet- and NiN-style CNNs, trained on demand and cached on disk.

Models take images in ``[0, 1]`` of shape ``(B, C, H, W)`` float32 and return logits ``(B, L)``;
normalisation (``(x - mean) / std``) happens inside the model. Each architecture comes in two
activation kinds:

* ``"relu"``: ReLU + max-pool. Piecewise linear, so its exact input Hessian is zero almost
  everywhere: measure curvature with finite differences (``method="fd"``/``"fd2"``).
* ``"smooth"``: softplus (beta 1) + average pool. Infinitely differentiable: exact HVPs
  (``method="autograd"``).

:func:`train` trains a model (seeded; no global RNG state is changed), caches the state dict under
a key built from every setting that changes the weights, and returns it in eval mode with its test
accuracy. :func:`load_checkpoint` loads a user's TorchScript file, a state-dict checkpoint of a
user class, or a zoo cache file.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from curvext.data import datasets as _data
from curvext.utils.atomic_files import atomic_path
from curvext.utils.cache_keys import tensor_digest
from curvext.utils.progress import progress_bar

logger = logging.getLogger(__name__)

__all__ = ["LeNet", "NiN", "TrainConfig", "ZooModel", "ARCHITECTURES", "ACTIVATIONS", "build",
           "train", "load_checkpoint", "cache_dir", "evaluate_accuracy"]

ACTIVATIONS = ("relu", "smooth")
_CACHE_VERSION = 1
#: per-dataset (channels, image size, classes, mean, std). Any other name is an IDX dataset in
#: MNIST's layout (Fashion-MNIST, ...), whose spec is read from its training images.
_DATASETS = {"digits": (1, 8, 10, 0.30, 0.40), "mnist": (1, 28, 10, 0.1307, 0.3081)}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _act(activation: str) -> nn.Module:
    return nn.ReLU() if activation == "relu" else nn.Softplus()


def _pool(activation: str) -> nn.Module:
    return nn.MaxPool2d(2) if activation == "relu" else nn.AvgPool2d(2)


class _Base(nn.Module):
    """Normalisation inside the model; records its activation kind and input shape."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, activation: str,
                 mean: float, std: float):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if image_size < 4 or image_size % 4:
            raise ValueError(f"image_size must be a positive multiple of 4, got {image_size!r}")
        if std <= 0:
            raise ValueError(f"std must be > 0, got {std!r}")
        self.activation = activation
        self.input_shape = (in_channels, image_size, image_size)
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)


class LeNet(_Base):
    """conv3x3(c1) → act → pool → conv3x3(c2) → act → pool → fc(hidden) → act → fc(L)."""

    def __init__(self, in_channels: int = 1, image_size: int = 8, num_classes: int = 10,
                 activation: str = "relu", *, widths: tuple[int, int, int] = (16, 32, 64),
                 mean: float = 0.0, std: float = 1.0):
        super().__init__(in_channels, image_size, num_classes, activation, mean, std)
        c1, c2, hidden = widths
        s = image_size // 4
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), _act(activation), _pool(activation),
            nn.Conv2d(c1, c2, 3, padding=1), _act(activation), _pool(activation),
            nn.Flatten(), nn.Linear(c2 * s * s, hidden), _act(activation), nn.Linear(hidden, num_classes))


class NiN(_Base):
    """Network-in-network: two mlpconv blocks (3x3 then two 1x1 convs) with pooling, a 1x1 conv
    to L channels, global average pooling."""

    def __init__(self, in_channels: int = 1, image_size: int = 8, num_classes: int = 10,
                 activation: str = "relu", *, widths: tuple[int, int, int] = (24, 32, 48),
                 mean: float = 0.0, std: float = 1.0):
        super().__init__(in_channels, image_size, num_classes, activation, mean, std)
        c1, c2, c3 = widths

        def mlpconv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), _act(activation),
                    nn.Conv2d(cout, cout, 1), _act(activation), nn.Conv2d(cout, cout, 1), _act(activation)]

        self.body = nn.Sequential(
            *mlpconv(in_channels, c1), _pool(activation),
            *mlpconv(c1, c2), _pool(activation),
            nn.Conv2d(c2, c3, 3, padding=1), _act(activation), nn.Conv2d(c3, num_classes, 1),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())


ARCHITECTURES = {"lenet": LeNet, "nin": NiN}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that changes the trained weights (all of it goes into the cache key).

    ``train_limit``: use the first ``train_limit`` training images (None: all).
    ``data_digest``: for an IDX dataset other than MNIST, a digest of its training images and
    labels (None for the built-in datasets), so two datasets under one name never share weights.
    """

    name: str = "lenet"
    activation: str = "relu"
    dataset: str = "digits"
    seed: int = 0
    epochs: int = 60
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    train_limit: int | None = None
    data_digest: str | None = None

    def key(self) -> str:
        fields = asdict(self)
        if fields["data_digest"] is None:  # the built-in datasets keep their keys
            del fields["data_digest"]
        blob = json.dumps({**fields, "version": _CACHE_VERSION}, sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
        return f"{self.name}-{self.activation}-{self.dataset}-s{self.seed}-{digest}"


@dataclass(frozen=True)
class ZooModel:
    """A trained zoo model. ``model`` is in eval mode on CPU; ``test_accuracy`` in ``[0, 1]``."""

    model: nn.Module
    test_accuracy: float
    config: TrainConfig
    path: Path
    from_cache: bool


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """``path`` if given, else ``$CURVEXT_CACHE``, else ``~/.cache/curvext``."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("CURVEXT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "curvext"


def _check_dataset(dataset) -> None:
    if not isinstance(dataset, str) or not _NAME.fullmatch(dataset):
        raise ValueError(f"dataset must be 'digits', 'mnist' or the name of an IDX dataset (letters, digits, '.', "
                         f"'_', '-'), got {dataset!r}")


def build(name: str, activation: str = "relu", dataset: str = "digits", spec: tuple | None = None) -> nn.Module:
    """An untrained zoo model sized and normalised for ``dataset`` (``"digits"``, ``"mnist"``, or
    another IDX dataset with its ``spec`` = (channels, image size, classes, mean, std))."""
    if name not in ARCHITECTURES:
        raise ValueError(f"name must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    _check_dataset(dataset)
    if spec is None:
        if dataset not in _DATASETS:
            raise ValueError(f"dataset {dataset!r} is none of the built-in {sorted(_DATASETS)}: pass its spec "
                             "(channels, image size, classes, mean, std)")
        spec = _DATASETS[dataset]
    c, s, n, mean, std = spec
    return ARCHITECTURES[name](int(c), int(s), int(n), activation, mean=float(mean), std=float(std))


def _idx_spec(train: _data.Dataset) -> tuple:
    """(channels, image size, classes, mean, std) of an IDX dataset's training images."""
    _, c, h, w = train.images.shape
    if h != w:
        raise ValueError(f"zoo models take square images, the IDX dataset's are {h}x{w}")
    return (c, h, int(train.labels.max()) + 1, float(train.images.mean()), float(train.images.std()))


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Share of ``images`` ``(N, C, H, W)`` whose argmax logit equals ``labels`` ``(N,)``."""
    correct = 0
    for i in range(0, images.shape[0], batch_size):
        correct += int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
    return correct / max(1, images.shape[0])


def _load_split(cfg: TrainConfig, split: str, data_dir) -> _data.Dataset:
    if cfg.dataset == "digits":
        return _data.load_digits(split, seed=cfg.seed)
    if data_dir is None:
        raise ValueError(f"dataset={cfg.dataset!r} needs data_dir (a directory of IDX files)")
    return _data.load_idx(data_dir, split, limit=cfg.train_limit if split == "train" else None)


def _fit(model: nn.Module, ds: _data.Dataset, cfg: TrainConfig, gen: torch.Generator) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    model.train()
    n = len(ds)
    for epoch in progress_bar(range(cfg.epochs), desc=f"training {cfg.name}-{cfg.activation} on "
                              f"{cfg.dataset}", unit="epoch", leave=False):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            loss = nn.functional.cross_entropy(model(ds.images[idx]), ds.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        sched.step()
        logger.debug("epoch %d/%d: loss %.4f", epoch + 1, cfg.epochs, total / n)
    opt.zero_grad(set_to_none=True)  # hand back a model without stale .grad tensors
    model.eval()


def train(name: str = "lenet", activation: str = "relu", dataset: str = "digits", data_dir=None, *,
          epochs: int | None = None, seed: int = 0, lr: float = 3e-3, batch_size: int = 64,
          weight_decay: float = 0.0, train_limit: int | None = None, cache: str | os.PathLike | None = None,
          use_cache: bool = True) -> ZooModel:
    """Train (or load from the cache) a zoo model; returns it in eval mode with its test accuracy.

    Args:
        name: ``"lenet"`` or ``"nin"``.
        activation: ``"relu"`` (FD curvature) or ``"smooth"`` (exact HVPs).
        dataset: ``"digits"`` (sklearn, trained in seconds), ``"mnist"`` (needs ``data_dir``;
            default ``train_limit`` 20000 images and 8 epochs: about a minute (LeNet) or two (NiN)
            on 2 cores), or the name of another IDX dataset in ``data_dir`` (e.g.
            ``"fashion-mnist"``; trained like MNIST, normalised by its training images' mean and
            standard deviation, cached under its name and a digest of its training data).
        epochs: default 60 for digits (test accuracy LeNet 0.97-0.98, NiN 0.94-0.96) or 8 for
            MNIST (NiN relu 0.962, NiN smooth 0.972; LeNet relu 0.988 already at 4 epochs).
        seed: seeds weight init, shuffling and (digits) the train/test split. The global RNG is
            left as it was.
        cache: cache directory (see :func:`cache_dir`); ``use_cache=False`` retrains and overwrites.
            The key holds every :class:`TrainConfig` field but not ``data_dir`` (MNIST files are
            checked against ``SHA256SUMS`` when present).
    """
    _check_dataset(dataset)
    if epochs is None:
        epochs = 60 if dataset == "digits" else 8
    if dataset != "digits" and train_limit is None:
        train_limit = 20000
    for value, label in ((epochs, "epochs"), (batch_size, "batch_size")):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{label} must be a positive int, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    cfg = TrainConfig(name, activation, dataset, int(seed), epochs, float(lr), batch_size,
                      float(weight_decay), train_limit)
    spec, train_ds = None, None
    if dataset not in _DATASETS:  # another IDX dataset: its shape, classes and statistics from its files
        build(name, activation, "digits")  # validates name/activation before data is read
        train_ds = _load_split(cfg, "train", data_dir)
        spec = _idx_spec(train_ds)
        digest = tensor_digest(train_ds.images) + tensor_digest(train_ds.labels)
        cfg = TrainConfig(**{**asdict(cfg), "data_digest": digest})
    with torch.random.fork_rng(devices=[]):  # seeded init; the global RNG is left as it was
        torch.manual_seed(cfg.seed)
        model = build(name, activation, dataset, spec)  # also validates name/activation before data is read
    path = cache_dir(cache) / f"{cfg.key()}.pt"
    test = _load_split(cfg, "test", data_dir)
    if use_cache and path.is_file():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["state_dict"])
        model.eval()
        logger.info("loaded %s from cache %s", cfg.key(), path)
        return ZooModel(model, float(ckpt["test_accuracy"]), cfg, path, True)

    train_ds = _load_split(cfg, "train", data_dir) if train_ds is None else train_ds
    gen = torch.Generator().manual_seed(cfg.seed)
    _fit(model, train_ds, cfg, gen)
    acc = evaluate_accuracy(model, test.images, test.labels)
    logger.info("trained %s: test accuracy %.4f", cfg.key(), acc)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # a concurrent reader never sees half a file
        torch.save({"state_dict": model.state_dict(), "test_accuracy": acc, "config": asdict(cfg),
                    "spec": None if spec is None else list(spec)}, tmp)
    return ZooModel(model, acc, cfg, path, False)


def _import_class(module_path: str):
    if module_path.count(":") != 1:
        raise ValueError(f"module_path must look like 'package.module:ClassName', got {module_path!r}")
    mod_name, cls_name = module_path.split(":")
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"module_path {module_path!r} cannot be imported: {exc}") from exc
    return cls


def _load_exported(path: Path, device) -> nn.Module:
    """The module of a ``torch.export`` program on ``device``, flagged as in eval mode: an
    exported graph keeps the mode it was exported in, and its ``eval()`` is not supported, so
    the flags are set directly. The program is moved by torch.export's own pass, since tensors
    its graph creates (``arange``, ``zeros``) are tied to the device it was exported on."""
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001  (torch.export raises many types for a bad archive)
        raise ValueError(f"{path} is not a readable torch.export program (.pt2): {exc}") from exc
    from torch.export.passes import move_to_device_pass

    program = move_to_device_pass(program, torch.device(device or "cpu"))  # CUDA-exported programs too
    model = program.module()
    for m in model.modules():
        m.training = False
    return model


def load_checkpoint(path: str | os.PathLike, module_path: str | None = None, *,
                    model_kwargs: dict | None = None, device=None) -> nn.Module:
    """Load a model for evaluation: eval mode, on ``device`` (default: the CPU).

    * ``module_path=None``: ``path`` is a TorchScript file (``torch.jit.save``) or a zoo cache
      file written by :func:`train` (rebuilt from its recorded config).
    * ``module_path="package.module:ClassName"``: ``path`` is a state dict (or a dict holding one
      under ``"state_dict"`` / ``"model_state_dict"``) for ``ClassName(**model_kwargs)``.
    * ``path`` ending in ``.pt2`` (``module_path=None``): a ``torch.export`` program
      (``torch.export.save``), exported in eval mode with a dynamic batch dimension
      (``dynamic_shapes=({0: torch.export.Dim("batch")},)``), since curvext batches images,
      directions and classes. The successor of TorchScript, which torch 2.14 deprecates.

    The model must accept inputs in ``[0, 1]`` (or pass it through
    :class:`curvext.data.normalization.Normalized`); curvext does not normalise for it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if module_path is None and path.suffix == ".pt2":
        return _load_exported(path, device)
    model = _load_module(path, module_path, model_kwargs)
    return model if device is None else model.to(device)


def _load_module(path: Path, module_path: str | None, model_kwargs: dict | None) -> nn.Module:
    """A TorchScript file, a zoo cache file or a state dict for ``module_path`` (eval mode, CPU)."""
    if module_path is None:
        try:
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice: the user chose the format
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError:
            pass
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{path} is neither TorchScript nor a readable checkpoint: {exc}") from exc
        if not (isinstance(ckpt, dict) and "config" in ckpt and "state_dict" in ckpt):
            raise ValueError(f"{path} is not TorchScript; for a state-dict checkpoint pass "
                             "module_path='package.module:ClassName'")
        cfg = ckpt["config"]
        model = build(cfg["name"], cfg["activation"], cfg["dataset"], ckpt.get("spec"))
        model.load_state_dict(ckpt["state_dict"])
        return model.eval()
    cls = _import_class(module_path)
    model = cls(**(model_kwargs or {}))
    if not isinstance(model, nn.Module):
        raise ValueError(f"{module_path} did not build an nn.Module (got {type(model).__name__})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        for k in ("state_dict", "model_state_dict"):
            if k in state and isinstance(state[k], dict):
                state = state[k]
                break
    model.load_state_dict(state)
    return model.eval()
