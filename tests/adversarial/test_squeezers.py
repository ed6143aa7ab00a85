"""curvext.adversarial.squeezers against scipy and literal numpy references."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import median_filter as scipy_median

from curvext.adversarial import squeezers
from curvext.adversarial.squeezers import Squeezer, non_local_means, squeezer_for


@pytest.mark.parametrize("size", [2, 3])
def test_median_filter_matches_scipy(size):
    x = torch.rand(2, 3, 7, 6, generator=torch.Generator().manual_seed(size))
    ref = scipy_median(x.numpy(), size=(1, 1, size, size))
    np.testing.assert_array_equal(squeezers.median_filter(x, size).numpy(), ref)
    with pytest.raises(ValueError, match="size"):
        squeezers.median_filter(x, 4)


def reference_nlm(img: np.ndarray, search: int, patch: int, strength: float) -> np.ndarray:
    """Non-local means written out per pixel: (C, H, W) in [0, 1], mirrored borders."""
    r, p = search // 2, patch // 2
    C, H, W = img.shape
    pad = np.pad(img * 255.0, ((0, 0), (r + p, r + p), (r + p, r + p)), mode="reflect")
    out = np.zeros_like(img)
    for i in range(H):
        for j in range(W):
            ci, cj = i + r + p, j + r + p
            here = pad[:, ci - p : ci + p + 1, cj - p : cj + p + 1]
            total, weights = np.zeros(C), 0.0
            for di in range(-r, r + 1):
                for dj in range(-r, r + 1):
                    there = pad[:, ci + di - p : ci + di + p + 1, cj + dj - p : cj + dj + p + 1]
                    w = np.exp(-np.mean((here - there) ** 2) / strength**2)
                    total += w * pad[:, ci + di, cj + dj]
                    weights += w
            out[:, i, j] = total / weights / 255.0
    return out


@pytest.mark.parametrize("channels, strength", [(1, 20.0), (3, 60.0)])
def test_non_local_means_matches_the_literal_filter(channels, strength):
    x = torch.rand(2, channels, 7, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(channels))
    out = non_local_means(x, 5, 3, strength)
    for b in range(2):
        # float64 throughout: the two differ only by summation order
        np.testing.assert_allclose(out[b].numpy(), reference_nlm(x[b].numpy(), 5, 3, strength), rtol=1e-10, atol=1e-12)


def test_non_local_means_limits():
    """Tiny strength: only the pixel itself has weight (identity). Huge strength: the mean of
    the search window over the mirrored image."""
    x = torch.rand(1, 1, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(non_local_means(x, 3, 3, 1e-3), x)
    box = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1,) * 4, mode="reflect"), 3, stride=1)
    torch.testing.assert_close(non_local_means(x, 3, 1, 1e9), box)
    with pytest.raises(ValueError, match="search"):
        non_local_means(x, 4, 3, 2.0)
    with pytest.raises(ValueError, match="strength"):
        non_local_means(x, 3, 3, 0.0)
    with pytest.raises(ValueError, match="larger"):
        non_local_means(x, 17, 3, 2.0)  # reflect padding of 9 pixels needs more than 9


def test_settings_per_dataset_and_description():
    assert squeezer_for("mnist", 1, 28) == ("digits", Squeezer(1, 2, None))
    assert squeezer_for("digits", 1, 8)[1].describe() == "1-bit depth, 2x2 median"
    assert squeezer_for("fashion-mnist", 1, 28) == ("greyscale", Squeezer(5, 2, None))
    assert squeezer_for("folder", 3, 32)[1] == Squeezer(5, 2, (13, 3, 2.0))  # Xu et al.'s CIFAR-10
    assert squeezer_for("folder", 3, 224)[1] == Squeezer(5, 2, (11, 3, 4.0))  # and ImageNet
    assert Squeezer(5, 2, (13, 3, 2)).describe() == "5-bit depth, 2x2 median, non-local means 13-3-2"
    assert len(Squeezer(4, 0, None).squeezed(torch.rand(1, 1, 4, 4))) == 1
    for bad in (dict(bits=0), dict(median=5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Squeezer(**bad)
