"""Shared checks for a mixer's implementations (``impl``) beyond the generic tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


def cosine_upstream(y: Tensor) -> Tensor:
    """A fixed, non-constant upstream gradient for ``y`` (so no gradient is a plain sum)."""
    return torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y)


def impl_outputs_and_grads(mixer: nn.Module, x: Tensor, impls: Sequence[str] = ("naive", "chunk"),
                           upstream: Callable[[Tensor], Tensor] = cosine_upstream
                           ) -> dict[str, tuple[Tensor, dict[str, Tensor]]]:
    """For each impl: the mixer's output on ``x`` and the gradients of ``sum(y * upstream(y))`` with respect to the
    input (key ``"x"``) and every parameter that receives one."""
    results = {}
    for impl in impls:
        mixer.impl = impl
        mixer.zero_grad()
        xi = x.clone().requires_grad_()
        y = mixer(xi)
        y.backward(upstream(y))
        grads = {"x": xi.grad, **{n: p.grad.clone() for n, p in mixer.named_parameters() if p.grad is not None}}
        results[impl] = (y.detach(), grads)
    return results
