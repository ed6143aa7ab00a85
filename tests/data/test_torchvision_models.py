"""curvext.data.torchvision_models: a torchvision architecture with the user's weights, never a download."""
from __future__ import annotations

import pytest
import torch

torchvision = pytest.importorskip("torchvision")

from curvext.data.torchvision_models import load_torchvision  # noqa: E402


def test_weights_are_loaded_with_constructor_arguments(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.get_model("resnet18", weights=None, num_classes=10).eval()
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "w.pth")
    model = load_torchvision("resnet18", tmp_path / "w.pth", model_kwargs={"num_classes": 10})
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    assert not model.training


def test_mistakes_are_named(tmp_path):
    with pytest.raises(ValueError, match="did you mean resnet18"):
        load_torchvision("resnet81", None)
    with pytest.raises(ValueError, match="never downloads"):
        load_torchvision("resnet18", None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_torchvision("resnet18", tmp_path / "none.pth")
    torch.save(torchvision.models.get_model("resnet18", weights=None, num_classes=10).state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match="num_classes"):
        load_torchvision("resnet18", tmp_path / "w.pth")  # 1000 classes by default
