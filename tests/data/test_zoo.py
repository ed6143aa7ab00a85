"""Tests of curvext.data.zoo: architectures, seeded training, on-disk cache, checkpoint loading."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from curvext.data import zoo


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo_cache")


@pytest.fixture(scope="module")
def quick(cache):
    """A LeNet trained for a few epochs on digits (a second or two)."""
    return zoo.train("lenet", "relu", epochs=4, seed=1, cache=cache)


@pytest.mark.parametrize("name", sorted(zoo.ARCHITECTURES))
@pytest.mark.parametrize("activation", zoo.ACTIVATIONS)
@pytest.mark.parametrize("dataset,size", [("digits", 8), ("mnist", 28)])
def test_build_shapes_and_activation_kind(name, activation, dataset, size):
    m = zoo.build(name, activation, dataset).eval()
    out = m(torch.rand(3, 1, size, size))
    assert out.shape == (3, 10) and out.dtype == torch.float32
    kinds = {type(mod) for mod in m.modules()}
    if activation == "relu":
        assert nn.ReLU in kinds and nn.MaxPool2d in kinds and nn.Softplus not in kinds
    else:  # smooth: nothing piecewise linear, so exact Hessians are meaningful
        assert nn.ReLU not in kinds and nn.MaxPool2d not in kinds and nn.Softplus in kinds
    assert m.activation == activation and m.input_shape == (1, size, size)


def test_normalisation_inside_model():
    m = zoo.build("lenet", "relu", "mnist")
    assert float(m.mean) == pytest.approx(0.1307) and float(m.std) == pytest.approx(0.3081)


def test_build_rejects_bad_names():
    with pytest.raises(ValueError, match="name"):
        zoo.build("resnet")
    with pytest.raises(ValueError, match="activation"):
        zoo.build("lenet", "tanh")
    with pytest.raises(ValueError, match="dataset"):
        zoo.build("lenet", "relu", "cifar")
    with pytest.raises(ValueError, match="epochs"):
        zoo.train(epochs=0)
    with pytest.raises(ValueError, match="data_dir"):
        zoo.train("lenet", "relu", "mnist", epochs=1)


def test_train_learns_and_is_eval(quick):
    assert quick.test_accuracy > 0.8  # 4 epochs on digits; chance is 0.1
    assert not quick.model.training and not quick.from_cache
    assert all(p.grad is None for p in quick.model.parameters())
    assert quick.path.is_file() and quick.path.name.startswith("lenet-relu-digits-s1-")


def test_cache_hit_and_key(quick, cache):
    again = zoo.train("lenet", "relu", epochs=4, seed=1, cache=cache)
    assert again.from_cache and again.path == quick.path
    assert again.test_accuracy == quick.test_accuracy
    for a, b in zip(again.model.state_dict().values(), quick.model.state_dict().values()):
        assert torch.equal(a, b)
    keys = {zoo.TrainConfig(seed=1, epochs=4).key(), zoo.TrainConfig(seed=2, epochs=4).key(),
            zoo.TrainConfig(seed=1, epochs=5).key(), zoo.TrainConfig(seed=1, epochs=4, lr=1e-3).key(),
            zoo.TrainConfig(seed=1, epochs=4, activation="smooth").key()}
    assert len(keys) == 5


def test_training_is_seeded_and_leaves_global_rng(tmp_path):
    torch.manual_seed(7)
    state = torch.random.get_rng_state()
    a = zoo.train("lenet", "smooth", epochs=1, seed=3, cache=tmp_path / "a")
    assert torch.equal(torch.random.get_rng_state(), state)
    b = zoo.train("lenet", "smooth", epochs=1, seed=3, cache=tmp_path / "b")
    assert not b.from_cache
    for x, y in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(x, y)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CURVEXT_CACHE", str(tmp_path))
    assert zoo.cache_dir() == tmp_path
    assert zoo.cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("CURVEXT_CACHE")
    assert zoo.cache_dir().parts[-2:] == (".cache", "curvext")


def _same_outputs(a: nn.Module, b: nn.Module, size: int = 8) -> None:
    x = torch.rand(4, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_load_checkpoint_zoo_file_and_torchscript(quick, tmp_path):
    _same_outputs(zoo.load_checkpoint(quick.path), quick.model)
    ts = tmp_path / "m.pt"
    with warnings.catch_warnings():  # torch.jit is deprecated in recent torch but still what users ship
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(quick.model, torch.rand(1, 1, 8, 8))
    traced.save(str(ts))
    loaded = zoo.load_checkpoint(ts)
    assert not loaded.training
    _same_outputs(loaded, quick.model)


def test_load_checkpoint_state_dict_with_module_path(quick, tmp_path):
    sd = tmp_path / "sd.pt"
    torch.save({"model_state_dict": quick.model.state_dict()}, sd)
    m = zoo.load_checkpoint(sd, "curvext.data.zoo:LeNet", model_kwargs={"mean": 0.3, "std": 0.4})
    _same_outputs(m, quick.model)
    torch.save(quick.model.state_dict(), sd)
    with pytest.raises(ValueError, match="module_path"):
        zoo.load_checkpoint(sd)
    with pytest.raises(ValueError, match="package.module:ClassName"):
        zoo.load_checkpoint(sd, "curvext.data.zoo.LeNet")
    with pytest.raises(ValueError, match="cannot be imported"):
        zoo.load_checkpoint(sd, "curvext.data.zoo:NoSuchNet")
    with pytest.raises(FileNotFoundError):
        zoo.load_checkpoint(tmp_path / "missing.pt")


def test_load_exported_program(tmp_path):
    """A torch.export program (.pt2) with a dynamic batch loads in eval mode, equals the model it
    was exported from, and supports the double backward of exact curvature."""
    torch.manual_seed(0)
    model = zoo.build("lenet", "smooth", "digits").eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (torch.rand(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    path = tmp_path / "lenet.pt2"
    torch.export.save(program, str(path))
    loaded = zoo.load_checkpoint(path)
    assert not any(m.training for m in loaded.modules())
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(loaded(x), model(x))
    from curvext.curvature.hvp import InputHessian

    V, idx = torch.randn(5, 1, 8, 8), torch.arange(5)
    cls, base = torch.zeros(5, dtype=torch.long), torch.ones(5, dtype=torch.long)
    torch.testing.assert_close(InputHessian(loaded, x, cls, base)(V, idx), InputHessian(model, x, cls, base)(V, idx))
    (tmp_path / "bad.pt2").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="not a readable torch.export program"):
        zoo.load_checkpoint(tmp_path / "bad.pt2")


def _idx_folder(root, images, labels) -> None:
    """Write ``images (N, H, W)`` uint8 and ``labels`` as both splits of an IDX dataset."""
    import gzip
    import struct

    import numpy as np

    def write(path, arr):
        arr = np.asarray(arr, dtype=np.uint8)
        with gzip.open(path, "wb") as fh:
            fh.write(struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
                     + arr.tobytes())

    root.mkdir()
    for stem in ("train", "t10k"):
        write(root / f"{stem}-images-idx3-ubyte.gz", images)
        write(root / f"{stem}-labels-idx1-ubyte.gz", labels)


def test_another_idx_dataset_trains_under_its_own_name(tmp_path):
    """An IDX dataset that is not MNIST: sized, normalised and cached from its own files; two
    datasets under one name never share weights; the cache file rebuilds the model."""
    from curvext import data

    digits = data.load_digits("train")
    images = (digits.images[:, 0].numpy() * 255).round()
    labels = digits.labels.numpy()
    _idx_folder(tmp_path / "a", images, labels)
    zm = zoo.train("lenet", "relu", "tiny-fashion", tmp_path / "a", epochs=2, cache=tmp_path / "zoo")
    assert zm.path.name.startswith("lenet-relu-tiny-fashion-s0-") and zm.config.data_digest is not None
    model = zm.model
    assert model.input_shape == (1, 8, 8) and model.num_classes == 10
    x = data.load_idx(tmp_path / "a", "train")
    assert float(model.mean) == pytest.approx(float(x.images.mean())) and float(model.std) == pytest.approx(
        float(x.images.std()))
    again = zoo.train("lenet", "relu", "tiny-fashion", tmp_path / "a", epochs=2, cache=tmp_path / "zoo")
    assert again.from_cache and again.path == zm.path
    _same_outputs(zoo.load_checkpoint(zm.path), model)
    _idx_folder(tmp_path / "b", 255 - images, labels)  # other images, same name
    other = zoo.train("lenet", "relu", "tiny-fashion", tmp_path / "b", epochs=2, cache=tmp_path / "zoo")
    assert not other.from_cache and other.path != zm.path
    with pytest.raises(ValueError, match="dataset"):
        zoo.train("lenet", "relu", "../escape", tmp_path / "a")
    with pytest.raises(ValueError, match="data_dir"):
        zoo.train("lenet", "relu", "tiny-fashion")
