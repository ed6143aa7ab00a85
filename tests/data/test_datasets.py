"""Tests of curvext.data: shapes, ranges, seeded splits, IDX parsing, checksums, image folders."""
from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from curvext import data

MNIST_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


def _write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    arr = np.asarray(arr, dtype=np.uint8)
    raw = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)


@pytest.fixture
def fake_mnist(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labs = rng.integers(0, 10, size=7, dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labs, gz=False)  # raw file also accepted
    return tmp_path, imgs, labs


def test_digits_shapes_range_and_split():
    tr, te = data.load_digits("train", seed=3), data.load_digits("test", seed=3)
    assert tr.images.shape[1:] == (1, 8, 8) and tr.images.dtype == torch.float32
    assert len(tr) + len(te) == 1797 and len(te) == 450
    assert te.labels.dtype == torch.int64 and set(te.labels.tolist()) == set(range(10))
    assert float(tr.images.min()) == 0.0 and float(tr.images.max()) == 1.0
    # seeded: same seed same images; a different seed a different split
    assert torch.equal(te.images, data.load_digits("test", seed=3).images)
    assert not torch.equal(te.labels, data.load_digits("test", seed=4).labels)
    # train and test are disjoint (compare rows as bytes)
    rows_tr = {r.tobytes() + bytes([l]) for r, l in zip(tr.images.numpy(), tr.labels.numpy())}
    overlap = sum(r.tobytes() + bytes([l]) in rows_tr for r, l in zip(te.images.numpy(), te.labels.numpy()))
    assert overlap <= 5  # digits holds a few exact duplicate images; a leaky split would give ~450


def test_digits_bad_args():
    with pytest.raises(ValueError, match="split"):
        data.load_digits("val")
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_digits(test_fraction=1.5)


def test_mnist_fake_files_roundtrip(fake_mnist):
    root, imgs, labs = fake_mnist
    ds = data.load_mnist(root, "test")
    assert ds.images.shape == (7, 1, 28, 28) and ds.images.dtype == torch.float32
    np.testing.assert_allclose(ds.images[:, 0].numpy(), imgs / 255.0, rtol=0, atol=1e-7)
    assert ds.labels.tolist() == labs.tolist()
    assert len(data.load_mnist(root, "test", limit=3)) == 3


def test_mnist_missing_file_is_named(fake_mnist):
    root, _, _ = fake_mnist
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.load_mnist(root, "train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_mnist(root / "nope")


def test_mnist_checksum_verified(fake_mnist):
    root, _, _ = fake_mnist
    img = root / "t10k-images-idx3-ubyte.gz"
    good = hashlib.sha256(img.read_bytes()).hexdigest()
    (root / "SHA256SUMS").write_text(f"{good}  {img.name}\n")
    assert len(data.load_mnist(root)) == 7
    (root / "SHA256SUMS").write_text(f"{'0' * 64}  {img.name}\n")
    with pytest.raises(ValueError, match="SHA256 mismatch"):
        data.load_mnist(root)
    assert len(data.load_mnist(root, verify=False)) == 7


def test_mnist_malformed_idx(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 16)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(1))
    with pytest.raises(ValueError, match="IDX"):
        data.load_mnist(tmp_path)


@pytest.mark.skipif(not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="shared MNIST files absent")
def test_real_mnist_test_split():
    ds = data.load_mnist(MNIST_DIR, "test", limit=100)
    assert ds.images.shape == (100, 1, 28, 28)
    assert 0.0 <= float(ds.images.min()) and float(ds.images.max()) <= 1.0
    assert ds.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known first test labels


def test_image_folder(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((10, 12, 3), 255, dtype=np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = data.load_image_folder(tmp_path, size=(6, 4), channels=3)
    assert ds.names == ("a.png", "b.png")
    assert ds.images.shape == (2, 3, 6, 4) and ds.images.dtype == torch.float32
    assert float(ds.images[0].max()) == 0.0 and float(ds.images[1].min()) == pytest.approx(1.0)
    assert ds.labels.tolist() == [-1, -1]
    assert data.load_image_folder(tmp_path, size=8, channels=1).images.shape == (2, 1, 8, 8)


def test_image_folder_bad_args(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image files"):
        data.load_image_folder(tmp_path, size=8)
    with pytest.raises(ValueError, match="channels"):
        data.load_image_folder(tmp_path, size=8, channels=2)
    with pytest.raises(ValueError, match="size"):
        data.load_image_folder(tmp_path, size=0)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read"):
        data.load_image_folder(tmp_path, size=8)


def test_idx_colour_images_and_generic_names(tmp_path):
    """An (N, H, W, C) IDX image file gives (N, C, H, W) images; errors name IDX files."""
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(5, 6, 4, 3), dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, size=5))
    ds = data.load_idx(tmp_path, "test")
    assert ds.images.shape == (5, 3, 6, 4)
    np.testing.assert_allclose(ds.images.permute(0, 2, 3, 1).numpy(), imgs / 255.0, rtol=0, atol=1e-7)
    with pytest.raises(FileNotFoundError, match="IDX file train-images"):
        data.load_idx(tmp_path, "train")
