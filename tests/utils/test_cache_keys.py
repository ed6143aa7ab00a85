"""curvext.utils.cache_keys: what the resumable caches are keyed by."""
from __future__ import annotations

import pytest
import torch

from curvext.utils.cache_keys import model_digest, settings_key, tensor_digest


def _net(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).eval()


def test_model_digest_follows_weights_buffers_and_structure():
    a, b = _net(0), _net(0)
    assert model_digest(a) == model_digest(b)  # same class, structure and values
    assert model_digest(a) != model_digest(_net(1))  # same architecture, other weights
    with torch.no_grad():
        b[0].weight[0, 0] += 1e-6  # one weight, by less than float32's resolution of most values
    assert model_digest(a) != model_digest(b)
    c = _net(0)
    c[1].running_mean += 1  # a buffer, not a parameter
    assert model_digest(a) != model_digest(c)
    wider = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3, eps=1e-3)).eval()
    wider.load_state_dict(a.state_dict())  # same tensors, another layer setting
    assert model_digest(a) != model_digest(wider)
    assert model_digest(a.double()) != model_digest(_net(0))  # the dtype counts


def test_model_digest_of_bfloat16_and_scalar_buffers():
    m = _net(0).to(torch.bfloat16)
    m.register_buffer("scale", torch.tensor(2.0))
    assert len(model_digest(m)) == 12


def test_tensor_digest_follows_values_dtype_and_shape():
    x = torch.arange(6.0)
    assert tensor_digest(x) == tensor_digest(x.clone())
    assert tensor_digest(x) != tensor_digest(x.reshape(2, 3))
    assert tensor_digest(x) != tensor_digest(x.double())
    assert tensor_digest(x) != tensor_digest(x + 1)
    assert tensor_digest(x[::2]) == tensor_digest(x[::2].contiguous())  # views hash by value


def test_settings_key_ignores_order():
    assert settings_key({"a": 1, "b": "x"}) == settings_key({"b": "x", "a": 1})
    assert settings_key({"a": 1}) != settings_key({"a": 2})


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        model_digest("lenet")
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        tensor_digest([1, 2])


def test_model_digest_sees_the_graph_of_exported_programs_and_all_buffers():
    """Exported ReLU and smooth LeNets with the same weights differ only in their graphs."""
    from curvext.data import zoo

    relu, smooth = zoo.build("lenet", "relu", "digits").eval(), zoo.build("lenet", "smooth", "digits").eval()
    smooth.load_state_dict(relu.state_dict())
    x = (torch.rand(2, 1, 8, 8),)
    a, b = torch.export.export(relu, x).module(), torch.export.export(smooth, x).module()
    assert model_digest(a) != model_digest(b)
    assert model_digest(a) == model_digest(torch.export.export(relu, x).module())  # stable
    m = _net(0)
    before = model_digest(m)
    m.register_buffer("scale", torch.tensor(1.0), persistent=False)  # not in state_dict
    assert model_digest(m) != before


class _Offsets(torch.nn.Module):
    """x + arange(d) * scale on a device named in the code: a constant in the graph."""

    def __init__(self, device="cpu", scale=1.0):
        super().__init__()
        self.device, self.scale = device, scale

    def forward(self, x):
        return x + torch.arange(x.shape[-1], device=self.device) * torch.tensor([self.scale, self.scale, self.scale])


def test_model_digest_ignores_the_device_in_graph_code_but_not_lifted_constants():
    x = torch.rand(2, 3)
    on_cpu = torch.fx.symbolic_trace(_Offsets("cpu"))
    on_gpu = torch.fx.symbolic_trace(_Offsets("cuda:1"))  # never run: only its code differs
    assert "cuda" in on_gpu.code and model_digest(on_cpu) == model_digest(on_gpu)
    a = torch.export.export(_Offsets(scale=0.5), (x,)).module()
    b = torch.export.export(_Offsets(scale=0.4), (x,)).module()
    assert not torch.equal(a(x), b(x)) and model_digest(a) != model_digest(b)
