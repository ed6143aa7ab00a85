"""Batched symmetric operators shared by the benchmarks (and usable by their tests).

Each builder returns an object with ``op(V, index)`` (curvext's batched-operator convention),
``matvec(s, v)`` for one sample (scipy / per-sample loops), ``batched_matmul(V)`` for
linear_operator's closure ``(B, n, 1) -> (B, n, 1)``, ``shape`` and ``B``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Problem:
    name: str
    B: int
    shape: tuple
    op: Callable
    matvec: Callable
    batched_matmul: Callable

    @property
    def n(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def diag_plus_low_rank(B=64, n=3072, rank=10, dtype=torch.float32, device="cpu", seed=0) -> Problem:
    """A_s = diag(d_s) + U_s diag(c_s) U_s^T: cheap, so the solver's own work dominates."""
    g = torch.Generator().manual_seed(seed)
    d = (torch.rand(B, n, generator=g) * 0.2 - 0.1).to(dtype).to(device)
    U = torch.linalg.qr(torch.randn(B, n, rank, generator=g))[0].to(dtype).to(device)
    c = (torch.randn(B, rank, generator=g) * 5).to(dtype).to(device)

    everyone = torch.arange(B, device=device)

    def op(V, index):
        Vf = V.reshape(V.shape[0], -1)
        # Gathering U for a full batch would copy B*n*rank numbers per call (2.5 ms, more than the
        # products): index the factors only when some samples have left.
        full = index.numel() == B and torch.equal(index, everyone)
        Ui, ci, di = (U, c, d) if full else (U[index], c[index], d[index])
        coef = ci * torch.bmm(Vf.unsqueeze(1), Ui).squeeze(1)  # (b, rank)
        low = torch.bmm(Ui, coef.unsqueeze(2)).squeeze(2)
        return (di * Vf + low).reshape(V.shape)

    def matvec(s, v):
        return d[s] * v + U[s] @ (c[s] * (U[s].T @ v))

    def batched_matmul(V):  # (B, n, 1)
        v = V[..., 0]
        return op(v, torch.arange(B, device=device)).unsqueeze(-1)

    return Problem("diag+low-rank", B, (n,), op, matvec, batched_matmul)


class SmallCNN(torch.nn.Module):
    """Smooth (softplus) LeNet-style CNN for 3x32x32 inputs; random weights are enough here."""

    def __init__(self, classes=10):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 5)
        self.c2 = torch.nn.Conv2d(16, 32, 5)
        self.f1 = torch.nn.Linear(32 * 5 * 5, 128)
        self.f2 = torch.nn.Linear(128, classes)
        self.act = torch.nn.Softplus(beta=5)

    def forward(self, x):
        x = torch.nn.functional.avg_pool2d(self.act(self.c1(x)), 2)
        x = torch.nn.functional.avg_pool2d(self.act(self.c2(x)), 2)
        return self.f2(self.act(self.f1(x.flatten(1))))


def cnn_input_hvp(B=64, dtype=torch.float32, device="cpu", seed=0) -> Problem:
    """Input Hessian of F = f_2nd - f_top of a small CNN at B images, by double backward on a
    first-order graph built once (one backward per product for the whole batch)."""
    torch.manual_seed(seed)
    model = SmallCNN().to(dtype).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(B, 3, 32, 32, dtype=dtype, device=device, requires_grad=True)
    logits = model(x)
    top2 = logits.topk(2, dim=1).indices
    F = logits.gather(1, top2[:, 1:2]) - logits.gather(1, top2[:, :1])
    (grad,) = torch.autograd.grad(F.sum(), x, create_graph=True)

    def op(V, index):
        full = torch.zeros_like(x)
        full[index] = V.reshape((-1,) + tuple(x.shape[1:]))
        (hv,) = torch.autograd.grad(grad, x, grad_outputs=full, retain_graph=True)
        return hv[index].reshape(V.shape)

    single_graphs = {}

    def matvec(s, v):
        # The per-sample reference gets its own one-image graph, as a per-image loop would.
        if s not in single_graphs:
            xs = x[s : s + 1].detach().clone().requires_grad_(True)
            ls = model(xs)
            Fs = ls[0, top2[s, 1]] - ls[0, top2[s, 0]]
            (gs,) = torch.autograd.grad(Fs, xs, create_graph=True)
            single_graphs[s] = (xs, gs)
        xs, gs = single_graphs[s]
        (hv,) = torch.autograd.grad(gs, xs, grad_outputs=v.reshape(xs.shape), retain_graph=True)
        return hv.reshape(-1)

    def batched_matmul(V):
        return op(V[..., 0], torch.arange(B, device=device)).unsqueeze(-1)

    return Problem("small-CNN input HVP", B, (3, 32, 32), op, matvec, batched_matmul)
