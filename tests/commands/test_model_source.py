"""curvext.commands.model_source: the model options every command shares."""
from __future__ import annotations

import pytest
import torch

from curvext.cli import build_parser
from curvext.commands.evaluate import _models
from curvext.commands.model_source import load_command_model

torchvision = pytest.importorskip("torchvision")


@pytest.fixture
def resnet18_weights(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.get_model("resnet18", weights=None, num_classes=10).eval()
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    return reference, tmp_path / "w.pth"


@pytest.mark.parametrize("command", ["evaluate", "profile", "paths"])
def test_torchvision_model_with_constructor_arguments_in_every_command(command, resnet18_weights, tmp_path):
    """``--model torchvision:NAME --weights FILE --model-kwargs JSON`` gives the user's 10-class
    ResNet-18 (the same outputs as the reference built directly), in evaluate, profile and paths."""
    reference, weights = resnet18_weights
    args = build_parser().parse_args([command, "--model", "torchvision:resnet18", "--weights", str(weights),
                                      "--model-kwargs", '{"num_classes": 10}', "--dataset", "folder",
                                      "--data-dir", str(tmp_path)])
    model = next(_models(args, "cpu"))[1] if command == "evaluate" else load_command_model(args, "cpu")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)  # same weights, same ops
    assert model(x).shape == (2, 10)


def test_evaluate_names_a_torchvision_model_by_its_architecture(resnet18_weights, tmp_path):
    args = build_parser().parse_args(["evaluate", "--model", "torchvision:resnet18", "--weights",
                                      str(resnet18_weights[1]), "--model-kwargs", '{"num_classes": 10}'])
    label, _, accuracy = next(_models(args, "cpu"))
    assert (label, accuracy) == ("resnet18", None)
