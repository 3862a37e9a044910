"""The recall language model: embedding (+ positions), ``n_layers`` blocks of any mixer, a head.

It is a :class:`seqmix.core.decoding.Decoder` (``embed_tokens``, ``stack``, ``token_logits``), so
``seqmix recall generate`` answers queries with the one generation loop.

The mixer is injected: ``mixer`` is a factory ``d_model -> Mixer``, which LightningCLI
builds from a config entry such as::

    mixer:
      class_path: seqmix.core.mixers.softmax.SoftmaxAttention
      init_args: {n_heads: 1}

Loss and accuracy are taken on the queried positions only (targets != ``IGNORE_INDEX``);
the head is applied there only, which saves the ``[B, T, V]`` logits on the CPU.

EchoAtt (docs/echoatt.md): ``share_attention: {2: 1}`` makes layer 2 reuse layer 1's softmax probabilities
(``MixerStack``); ``distill_from: <a trained recall checkpoint>`` starts ``fit`` from that teacher's weights
(all but the shared layers' W_q/W_k) and adds ``distill_weight * echo_distill_loss`` (the tempered logit KL
at the queried positions plus every layer's hidden-state MSE) to the training loss.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.apps.recall.data import IGNORE_INDEX
from seqmix.core.blocks import ChannelMixerKind, MixerFactory, MixerStack, NormKind
from seqmix.core.distill import echo_distill_loss
from seqmix.core.embeddings import SinusoidalPositionalEncoding
from seqmix.apps.module import (StagedModule, load_trained, lr_multiplier, stage_accuracies, step_progress,
                                weight_decay_groups)


class RecallLM(StagedModule):
    """A causal LM for MQAR; ``vocab_size`` and ``max_len`` come from the datamodule (CLI links)."""

    def __init__(self, mixer: MixerFactory, vocab_size: int = 256, max_len: int = 64,
                 d_model: int = 64, n_layers: int = 2, positions: Literal["learned", "sinusoidal", "none"] = "learned",
                 mlp_ratio: float = 4.0, mlp: ChannelMixerKind = "glu", norm: NormKind = "layernorm",
                 dropout: float = 0.0, lr: float = 1e-3, weight_decay: float = 0.1, warmup_steps: int = 100,
                 schedule: Literal["cosine", "constant"] = "cosine", share_attention: dict[int, int] | None = None,
                 distill_from: str | None = None, distill_weight: float = 1.0, distill_temperature: float = 2.0):
        super().__init__()
        if positions not in ("learned", "sinusoidal", "none"):
            raise ValueError(f"RecallLM: positions={positions!r} is unknown; choose 'learned', 'sinusoidal' or 'none'")
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"RecallLM: schedule={schedule!r} is unknown; choose 'cosine' or 'constant'")
        if lr <= 0 or weight_decay < 0 or warmup_steps < 0:
            raise ValueError(f"RecallLM: need lr > 0, weight_decay >= 0, warmup_steps >= 0; "
                             f"got lr={lr}, weight_decay={weight_decay}, warmup_steps={warmup_steps}")
        if distill_weight < 0 or distill_temperature <= 0:
            raise ValueError(f"RecallLM: need distill_weight >= 0 and distill_temperature > 0 (e.g. 1.0 and 2.0); "
                             f"got {distill_weight} and {distill_temperature}")
        self.save_hyperparameters()  # the mixer too (its config under LightningCLI): checkpoints rebuild the model
        self.embed = nn.Embedding(vocab_size, d_model)
        if positions == "learned":
            self.pos = nn.Parameter(torch.randn(max_len, d_model) * 0.02)  # [L, D]
        elif positions == "sinusoidal":
            self.pos = SinusoidalPositionalEncoding(d_model, max_len=max_len)
        else:
            self.pos = None
        self.stack = MixerStack(d_model, n_layers, mixer, causal=True, mlp_ratio=mlp_ratio, mlp=mlp, norm=norm,
                                dropout=dropout, share_attention=share_attention)
        self._teacher: tuple[RecallLM, ...] = ()  # EchoAtt's teacher, set up for fit; a tuple: not in the state dict
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.acc = stage_accuracies(vocab_size)

    # ------------------------------------------------------------- model
    def embed_tokens(self, tokens: Tensor, offset: int = 0) -> Tensor:
        """``tokens: [B, T]`` at positions ``offset .. offset + T - 1`` -> ``[B, T, D]`` (token + position)."""
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"RecallLM: tokens must be int64 [batch, time], got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.hparams.vocab_size):
            raise ValueError(f"RecallLM: token ids must lie in [0, vocab_size={self.hparams.vocab_size}), got "
                             f"[{int(tokens.min())}, {int(tokens.max())}]; the data and model vocabularies differ")
        end, max_len = offset + tokens.shape[1], self.hparams.max_len
        if end > max_len and self.hparams.positions != "none":
            raise ValueError(f"RecallLM: sequence of {end} tokens exceeds max_len={max_len}; raise model.max_len")
        x = self.embed(tokens)  # [B, T, D]
        if isinstance(self.pos, nn.Parameter):
            x = x + self.pos[offset:end]
        elif self.pos is not None:
            x = self.pos(x, offset)
        return x

    def token_logits(self, hidden: Tensor) -> Tensor:
        """Final hidden states ``[..., D]`` -> logits ``[..., V]``."""
        return self.head(hidden)

    def hidden(self, tokens: Tensor) -> Tensor:
        """``tokens: [B, T]`` -> final hidden states ``[B, T, D]``."""
        return self.stack(self.embed_tokens(tokens))

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits at every position: ``[B, T] -> [B, T, V]``."""
        return self.token_logits(self.hidden(tokens))

    def query_logits(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Logits ``[Q, V]`` and targets ``[Q]`` at the queried positions only."""
        queried = targets != IGNORE_INDEX  # [B, T]
        h = self.hidden(inputs)[queried]  # [B, T, D] -> [Q, D]
        return self.head(h), targets[queried]

    # ------------------------------------------------------------- steps
    def setup(self, stage: str) -> None:
        """For ``fit`` with ``distill_from``: load the teacher (frozen) and start from its weights (EchoAtt: the
        shared layers' W_q/W_k are the only teacher weights left out); a resumed fit then loads its own."""
        super().setup(stage)
        if stage != "fit" or self.hparams.distill_from is None or self._teacher:
            return
        teacher, _ = load_trained(RecallLM, self.hparams.distill_from, "recall",
                                  "pass model.distill_from: a checkpoint of `seqmix recall fit` (the unshared teacher)")
        mine = {k: self.hparams[k] for k in ("vocab_size", "d_model", "n_layers")}
        theirs = {k: teacher.hparams[k] for k in mine}
        if mine != theirs:
            raise ValueError(f"RecallLM: the distillation teacher {self.hparams.distill_from} has {theirs} but this "
                             f"student has {mine}; give the student the teacher's sizes")
        # strict=False for the shared layers' W_q/W_k alone: torch skips a deleted (None) submodule's keys silently
        missing, unexpected = self.load_state_dict(teacher.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(f"RecallLM: the teacher's weights do not fit this student (missing {missing}, "
                             f"unexpected {unexpected}); give both the same mixer and sizes")
        self._teacher = (teacher.requires_grad_(False).eval(),)

    def shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        inputs, targets = batch
        if stage != "train" or not self._teacher:
            logits, wanted = self.query_logits(inputs, targets)
            loss = F.cross_entropy(logits, wanted)
            self.log_classification(stage, loss, logits, wanted)
            return loss
        teacher = self._teacher[0].to(inputs.device)
        queried = targets != IGNORE_INDEX  # [B, T]
        final, hidden = self.stack.hidden_states(self.embed_tokens(inputs))  # [B, T, D], one [B, T, D] per layer
        logits, wanted = self.head(final[queried]), targets[queried]  # [Q, V], [Q]
        with torch.no_grad():
            t_final, t_hidden = teacher.stack.hidden_states(teacher.embed_tokens(inputs))
            t_logits = teacher.head(t_final[queried])  # [Q, V]
        distill = echo_distill_loss(logits, t_logits, hidden, t_hidden, temperature=self.hparams.distill_temperature)
        task = F.cross_entropy(logits, wanted)
        loss = task + self.hparams.distill_weight * distill.total
        self.log_classification(stage, loss, logits, wanted)
        self.log_dict({"train/task_loss": task, "train/distill_kl": distill.logits_kl,
                       "train/distill_mse": distill.hidden_mse}, on_step=True, on_epoch=False, batch_size=len(wanted))
        return loss

    def predict_step(self, batch, batch_idx) -> dict[str, Tensor]:
        """Per query: the example index in the batch, its position, the predicted and the true value."""
        inputs, targets = batch
        logits, wanted = self.query_logits(inputs, targets)
        example, position = (targets != IGNORE_INDEX).nonzero(as_tuple=True)  # [Q] each, row-major like [queried]
        return {"example": example, "position": position, "predicted": logits.argmax(-1), "target": wanted}

    # --------------------------------------------------------- optimiser
    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.AdamW(weight_decay_groups(self, h.weight_decay), lr=h.lr, betas=(0.9, 0.98))
        total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_multiplier(step, warmup_steps=h.warmup_steps, schedule=h.schedule, final_ratio=0.1,
                                         progress=step_progress(step, h.warmup_steps, total)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
