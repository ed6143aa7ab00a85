"""curvext.data.normalization: per-channel normalisation in front of a model."""
from __future__ import annotations

import pytest
import torch

from curvext.data.normalization import IMAGENET, Normalized, parse_normalization


def test_normalized_model_sees_standardised_inputs():
    seen = []
    inner = torch.nn.Identity()
    inner.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    model = Normalized(inner, *IMAGENET).eval()
    x = torch.rand(2, 3, 4, 4)
    model(x)
    mean = torch.tensor(IMAGENET[0]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET[1]).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], (x - mean) / std)
    assert {n for n, _ in model.named_buffers()} == {"mean", "std"}  # moves with .to(device)


def test_parse_forms():
    assert parse_normalization("none") is None
    assert parse_normalization("ImageNet") == IMAGENET
    assert parse_normalization("0.5/0.25") == ((0.5,), (0.25,))
    assert parse_normalization("0.1,0.2,0.3/1,2,3") == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))


@pytest.mark.parametrize("bad", ["", "0.5", "0.1,0.2/1", "0.5/0", "0.5/-1", "a/b", "0.5/inf"])
def test_bad_forms_are_refused(bad):
    with pytest.raises(ValueError, match="expected none, imagenet or"):
        parse_normalization(bad)


def test_bad_statistics_and_channel_mismatch():
    with pytest.raises(ValueError, match="same length"):
        Normalized(torch.nn.Identity(), (0.5, 0.5), (1.0,))
    with pytest.raises(ValueError, match="std positive"):
        Normalized(torch.nn.Identity(), (0.5,), (0.0,))
    with pytest.raises(ValueError, match="3 channel statistics, the images 1 channels"):
        Normalized(torch.nn.Identity(), *IMAGENET)(torch.rand(1, 1, 2, 2))
