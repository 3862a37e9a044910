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
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.apps.recall.data import IGNORE_INDEX
from seqmix.core.blocks import ChannelMixerKind, MixerFactory, MixerStack, NormKind
from seqmix.core.embeddings import SinusoidalPositionalEncoding
from seqmix.apps.module import StagedModule, lr_multiplier, stage_accuracies, step_progress, weight_decay_groups


class RecallLM(StagedModule):
    """A causal LM for MQAR; ``vocab_size`` and ``max_len`` come from the datamodule (CLI links)."""

    def __init__(self, mixer: MixerFactory, vocab_size: int = 256, max_len: int = 64,
                 d_model: int = 64, n_layers: int = 2, positions: Literal["learned", "sinusoidal", "none"] = "learned",
                 mlp_ratio: float = 4.0, mlp: ChannelMixerKind = "glu", norm: NormKind = "layernorm",
                 dropout: float = 0.0, lr: float = 1e-3, weight_decay: float = 0.1, warmup_steps: int = 100,
                 schedule: Literal["cosine", "constant"] = "cosine"):
        super().__init__()
        if positions not in ("learned", "sinusoidal", "none"):
            raise ValueError(f"RecallLM: positions={positions!r} is unknown; choose 'learned', 'sinusoidal' or 'none'")
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"RecallLM: schedule={schedule!r} is unknown; choose 'cosine' or 'constant'")
        if lr <= 0 or weight_decay < 0 or warmup_steps < 0:
            raise ValueError(f"RecallLM: need lr > 0, weight_decay >= 0, warmup_steps >= 0; "
                             f"got lr={lr}, weight_decay={weight_decay}, warmup_steps={warmup_steps}")
        self.save_hyperparameters()  # the mixer too (its config under LightningCLI): checkpoints rebuild the model
        self.embed = nn.Embedding(vocab_size, d_model)
        if positions == "learned":
            self.pos = nn.Parameter(torch.randn(max_len, d_model) * 0.02)  # [L, D]
        elif positions == "sinusoidal":
            self.pos = SinusoidalPositionalEncoding(d_model, max_len=max_len)
        else:
            self.pos = None
        self.stack = MixerStack(d_model, n_layers, mixer, causal=True, mlp_ratio=mlp_ratio, mlp=mlp, norm=norm,
                                dropout=dropout)
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
    def shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        inputs, targets = batch
        logits, wanted = self.query_logits(inputs, targets)
        loss = F.cross_entropy(logits, wanted)
        self.log_classification(stage, loss, logits, wanted)
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
