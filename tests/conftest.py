"""Shared fixtures: devices to parametrise over, seeded generators."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import curvext._ops as _ops
from curvext import data
from curvext.data import zoo

CUDA_OK = torch.cuda.is_available() and _ops.has_cuda_kernels()

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_OK,
                                                               reason="needs a CUDA GPU and a CUDA build"))]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state: unseeded draws (start vectors, random
    matrices) are the same on every run, so a failure reproduces."""
    import numpy as np

    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def deepfool_fails_on(monkeypatch):
    """``deepfool_fails_on(i, ...)``: from then on, the DeepFool that profiles and the shared
    subspace call leaves images i, ... at their original label (converged False), as a real
    DeepFool does when it runs out of iterations. ``monkeypatch.undo()`` restores it."""
    import dataclasses

    import curvext.geometry.profiles as profiles

    real = profiles.deepfool

    def fail(*samples):
        def deepfool(*args, **kwargs):
            res = real(*args, **kwargs)
            labels, converged = res.labels.clone(), res.converged.clone()
            for i in samples:
                labels[i], converged[i] = res.original[i], False
            return dataclasses.replace(res, labels=labels, converged=converged)

        monkeypatch.setattr(profiles, "deepfool", deepfool)

    return fail


def load_script(folder, name: str):
    """The module of the script ``folder/name.py`` (examples, benchmarks), imported by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(folder) / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line_error(argv, capsys) -> str:
    """Run the command line on ``argv``; assert it failed with status 2 and one line on stderr,
    no traceback (whether argparse refused a value or the command raised a user error)."""
    from curvext.cli import main

    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse refused a value
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def write_digit_folder(folder, n: int, *, flat: bool = False, offset: int = 0):
    """The digits test images offset..offset+n as 8x8 greyscale PNGs, one sub-folder per label
    (ImageFolder layout) or all in ``folder`` (flat)."""
    test = data.load_digits("test")
    for i in range(offset, offset + n):
        target = folder if flat else folder / str(int(test.labels[i]))
        target.mkdir(parents=True, exist_ok=True)
        pixels = (test.images[i, 0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(target / f"img{i:04d}.png")
    return folder


@pytest.fixture(scope="session")
def attack_lenet(tmp_path_factory):
    """The digits ReLU LeNet the attack and baseline tests share (15 epochs, seed 0), trained once
    per session into the session's scratch cache."""
    return zoo.train("lenet", "relu", epochs=15, seed=0, cache=tmp_path_factory.getbasetemp() / "zoo").model


def correctly_classified_digits(model, n: int, pool: int):
    """``(x, y)``: the first ``n`` of the first ``pool`` digits test images that ``model`` classifies
    correctly (asserting there are ``n``)."""
    ds = data.load_digits("test").subset(pool)
    with torch.no_grad():
        keep = model(ds.images).argmax(1) == ds.labels
    x, y = ds.images[keep][:n], ds.labels[keep][:n]
    assert len(y) == n, f"only {len(y)} of {pool} images correctly classified"
    return x, y


@pytest.fixture(scope="session")
def relu_lenet():
    """The zoo's ReLU LeNet on digits (trained once, cached) and its checkpoint file."""
    trained = zoo.train("lenet", "relu", "digits")
    return trained.model, trained.path


@pytest.fixture(scope="session")
def digit_folder(tmp_path_factory):
    return write_digit_folder(tmp_path_factory.mktemp("digits") / "images", 40)
