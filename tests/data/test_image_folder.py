"""curvext.data.image_folder: deterministic manifests of both layouts, preprocessing, bad files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from curvext.data.image_folder import ImageFileDataset, Preprocessing, scan_image_folder


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_imagefolder_layout_gives_sorted_paths_and_class_indices(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("dog/b.png", "cat/z.jpg", "dog/sub/a.png", "cat/a.png"):
        save(tmp_path / name, rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    m = scan_image_folder(tmp_path)
    assert m.classes == ("cat", "dog")
    assert m.paths == ("cat/a.png", "cat/z.jpg", "dog/b.png", "dog/sub/a.png") and m.labels == (0, 0, 1, 1)


def test_flat_folder_has_no_labels(tmp_path):
    save(tmp_path / "2.png", np.zeros((4, 4), dtype=np.uint8))
    save(tmp_path / "1.bmp", np.zeros((4, 4), dtype=np.uint8))
    m = scan_image_folder(tmp_path)
    assert m.paths == ("1.bmp", "2.png") and m.labels is None and m.classes == ()


def test_missing_and_empty_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no image files"):
        scan_image_folder(tmp_path)


def test_resize_shorter_side_then_centre_crop(tmp_path):
    # A 40x20 (w x h) image whose left half is black and right half white: the shorter side (20)
    # goes to 10, the width to 20, and the 10x10 centre crop straddles the edge at column 5.
    pixels = np.zeros((20, 40), dtype=np.uint8)
    pixels[:, 20:] = 255
    save(tmp_path / "a.png", pixels)
    x = ImageFileDataset(scan_image_folder(tmp_path), Preprocessing(image_size=10, resize=10, channels=1))[0][1]
    assert x.shape == (1, 10, 10) and x.dtype == torch.float32
    assert float(x[0, :, :4].max()) < 0.05 and float(x[0, :, 6:].min()) > 0.95
    rgb = ImageFileDataset(scan_image_folder(tmp_path), Preprocessing(image_size=8, channels=3))[0][1]
    assert rgb.shape == (3, 8, 8) and torch.equal(rgb[0], rgb[2])


def test_an_unreadable_file_gives_a_blank_image_and_the_reason(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"garbage")
    index, x, error = ImageFileDataset(scan_image_folder(tmp_path), Preprocessing(image_size=4, channels=1))[0]
    assert index == 0 and torch.equal(x, torch.zeros(1, 4, 4)) and "UnidentifiedImageError" in error


@pytest.mark.parametrize("kwargs, name", [(dict(image_size=0), "image_size"), (dict(resize=True), "resize"),
                                          (dict(image_size=10, resize=5), "resize"), (dict(channels=2), "channels")])
def test_bad_preprocessing_is_refused_by_name(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Preprocessing(**kwargs)
