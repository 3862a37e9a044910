"""EchoAtt's distillation loss: a shared-attention student learns from its unshared teacher.

EchoAtt (Rajabzadeh et al. 2024, "Attend, Copy, then Adjust for More Efficient Large Language Models")
builds the student from the teacher (``MixerStack(share_attention=...)``: the shared layers lose their
q/k, every other weight is inherited) and trains it by knowledge distillation. Implemented here, per
batch:

- the logit term (Hinton et al.): ``KL(softmax(z_t / tau) || softmax(z_s / tau)) * tau^2``, averaged over
  the rows (positions) given;
- the intermediate term: the mean over layers of ``MSE(h_s^l, h_t^l)``, each block's output of the
  student against the teacher's (``MixerStack.hidden_states``), same widths, layer ``l`` to layer ``l``;
- ``total = logit_weight * KL + hidden_weight * MSE``; the task's own loss (cross-entropy on the true
  labels) is the caller's, added beside it (``RecallLM(distill_from=...)`` does).

Left out: the paper's cross-entropy on the teacher's pseudo-labels and its two-stage schedule (distil,
then fine-tune on the labels alone: run a second ``fit`` without ``distill_from``), and its own weights of
the terms (``logit_weight`` / ``hidden_weight`` are the caller's). The teacher's tensors are detached
here, so the gradient reaches the student only.

    out = echo_distill_loss(student_logits, teacher_logits, student_hidden, teacher_hidden, temperature=2.0)
    loss = task_loss + weight * out.total
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


class DistillLoss(NamedTuple):
    """The terms of :func:`echo_distill_loss` (scalars), the weighted sum first."""

    total: Tensor
    logits_kl: Tensor  # KL(teacher || student) of the tempered distributions, times tau^2
    hidden_mse: Tensor  # mean over layers of the hidden-state MSE (0 when no hidden states are given)


def echo_distill_loss(student_logits: Tensor, teacher_logits: Tensor,
                      student_hidden: Sequence[Tensor] = (), teacher_hidden: Sequence[Tensor] = (), *,
                      temperature: float = 2.0, logit_weight: float = 1.0,
                      hidden_weight: float = 1.0) -> DistillLoss:
    """EchoAtt's distillation loss of a student against its teacher (see the module docstring).

    ``student_logits``, ``teacher_logits``: ``[..., V]`` at the same positions. ``student_hidden``,
    ``teacher_hidden``: one ``[B, T, D]`` per layer, as many in each (or none: the logit term only).
    """
    if temperature <= 0:
        raise ValueError(f"echo_distill_loss: temperature must be > 0 (e.g. 2.0), got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"echo_distill_loss: student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ; compare the same positions of the same vocabulary")
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError(f"echo_distill_loss: {len(student_hidden)} student hidden states but "
                         f"{len(teacher_hidden)} teacher ones; the student keeps the teacher's n_layers")
    v = student_logits.shape[-1]
    log_s = F.log_softmax(student_logits.reshape(-1, v).float() / temperature, dim=-1)  # [..., V] -> [N, V]
    log_t = F.log_softmax(teacher_logits.detach().reshape(-1, v).float() / temperature, dim=-1)  # [N, V]
    kl = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2
    mse = student_logits.new_zeros((), dtype=torch.float32)
    for layer, (s, t) in enumerate(zip(student_hidden, teacher_hidden)):
        if s.shape != t.shape:
            raise ValueError(f"echo_distill_loss: layer {layer}'s hidden states differ, student {tuple(s.shape)} "
                             f"vs teacher {tuple(t.shape)}; the student keeps the teacher's d_model")
        mse = mse + F.mse_loss(s.float(), t.detach().float())
    if student_hidden:
        mse = mse / len(student_hidden)
    return DistillLoss(logit_weight * kl + hidden_weight * mse, kl, mse)
