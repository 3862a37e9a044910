"""The language model as a LightningModule: next-token cross-entropy, bits per byte, AdamW with a cosine.

The network is :class:`~seqmix.apps.lm.model.CausalLM` built from typed arguments (the config schema); the
tokenizer comes from the datamodule (``data.tokenizer_json`` linked to ``model.tokenizer_json``), so it is
typed nowhere, decides the vocabulary, and is saved in every checkpoint (that hyper-parameter) and
as ``tokenizer.json`` in the run's log folder when ``fit`` starts. A checkpoint loaded into a module built
with another tokenizer (``test --ckpt_path`` after the datamodule trained a different BPE) is refused.

Logged: ``train/loss`` per step (nats per token), ``train/bpc`` per step (the batch's bits per byte),
``val/loss``, ``val/bpc``, ``test/loss``, ``test/bpc`` per epoch (:class:`~seqmix.apps.lm.metrics.BitsPerByte`:
the total nats over the split's bytes). ``bpc`` is bits per UTF-8 byte: bits per character on ASCII text.

Schedule: linear warm-up, then a cosine to ``min_lr_ratio * lr`` over the trainer's steps, or with
``budget_minutes`` over the training wall-clock time (a run ended by ``trainer.max_time`` then ends its
cosine with its budget: configs/lm/*.yaml).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.apps.files import atomic_write
from seqmix.apps.lm.data import IGNORE_INDEX
from seqmix.apps.lm.metrics import BitsPerByte, bits_per_byte
from seqmix.apps.lm.model import CausalLM, Positions
from seqmix.apps.lm.tokenizer import tokenizer_from_json
from seqmix.apps.module import STAGES, StagedModule, TimeBudgetSchedule, lr_multiplier, weight_decay_groups
from seqmix.core.blocks import ChannelMixerKind, MixerFactory, NormKind


class LanguageModel(TimeBudgetSchedule, StagedModule):
    """Next-token training of a :class:`CausalLM`.

    Args:
        mixer: the mixer of every layer (a ``class_path`` entry in the config).
        layer_mixers: instead of ``mixer``, one mixer per layer (a list of ``n_layers`` entries): a hybrid.
        tokenizer_json: the tokenizer's JSON (linked from ``data.tokenizer_json``).
        max_len: the training context (linked from ``data.context``): the learned positions' length.
        d_model, n_layers, positions, mlp_ratio, mlp, norm, dropout: :class:`CausalLM`.
        lr, weight_decay, warmup_steps, min_lr_ratio: AdamW (betas 0.9, 0.95) and the cosine's floor.
        budget_minutes: run the cosine over this much training time instead of the trainer's steps.
    """

    def __init__(self, tokenizer_json: str, mixer: MixerFactory | None = None,
                 layer_mixers: list[MixerFactory] | None = None, max_len: int = 256,
                 d_model: int = 128, n_layers: int = 4, positions: Positions = "rotary", mlp_ratio: float = 4.0,
                 mlp: ChannelMixerKind = "glu", norm: NormKind = "layernorm", dropout: float = 0.0,
                 lr: float = 1e-3, weight_decay: float = 0.1, warmup_steps: int = 100, min_lr_ratio: float = 0.1,
                 budget_minutes: float | None = None):
        super().__init__()
        if lr <= 0 or weight_decay < 0 or warmup_steps < 0 or not 0 <= min_lr_ratio <= 1:
            raise ValueError(f"LanguageModel: need lr > 0, weight_decay >= 0, warmup_steps >= 0, 0 <= min_lr_ratio "
                             f"<= 1; got {lr}, {weight_decay}, {warmup_steps}, {min_lr_ratio}")
        if budget_minutes is not None and budget_minutes <= 0:
            raise ValueError(f"LanguageModel: budget_minutes must be positive or None, got {budget_minutes}")
        if (mixer is None) == (layer_mixers is None):
            raise ValueError("LanguageModel: give model.mixer (every layer's) or model.layer_mixers (one per layer), "
                             f"exactly one of them; got {'both' if mixer is not None else 'neither'}")
        self.save_hyperparameters()  # the mixer too (its config under LightningCLI) and the tokenizer
        self.tokenizer = tokenizer_from_json(tokenizer_json, "model.tokenizer_json")
        self.net = CausalLM(mixer if mixer is not None else layer_mixers, vocab_size=self.tokenizer.vocab_size, max_len=max_len, d_model=d_model,
                            n_layers=n_layers, positions=positions, mlp_ratio=mlp_ratio, mlp=mlp, norm=norm,
                            dropout=dropout)
        self.bpc = nn.ModuleDict({stage: BitsPerByte() for stage in STAGES if stage != "train"})

    def forward(self, tokens: Tensor) -> Tensor:
        """Next-token logits ``[B, T] -> [B, T, V]``."""
        return self.net(tokens)

    def token_nats(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """The negative log-likelihood (nats) of every target, 0 on ``IGNORE_INDEX``: ``[B, T]``."""
        logits = self.net(inputs)  # [B, T, V]
        nats = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="none")  # [B * T]
        return nats.view_as(targets)  # [B * T] -> [B, T]

    def shared_step(self, batch: tuple[Tensor, Tensor, Tensor], stage: str) -> Tensor:
        inputs, targets, nbytes = batch
        nats = self.token_nats(inputs, targets)  # [B, T]
        count = int((targets != IGNORE_INDEX).sum())
        loss = nats.sum() / max(count, 1)
        training = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=training, on_epoch=not training, prog_bar=True, batch_size=count,
                 sync_dist=not training)
        if training:
            self.log("train/bpc", bits_per_byte(nats.detach().sum(), nbytes.sum()).float(), on_step=True,
                     on_epoch=False, batch_size=count)
        else:
            self.bpc[stage].update(nats.sum(), nbytes.sum())
            self.log(f"{stage}/bpc", self.bpc[stage], on_step=False, on_epoch=True, prog_bar=True, batch_size=count)
        return loss

    def predict_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Per window: its summed nats and its bytes (``bits_per_byte`` of the sums is the split's)."""
        inputs, targets, nbytes = batch
        return {"nats": self.token_nats(inputs, targets).sum(1), "bytes": nbytes.sum(1)}

    # ------------------------------------------------------------- checkpoints and the run folder
    def on_fit_start(self) -> None:
        """``tokenizer.json`` beside the run (its log folder), what ``generate --tokenizer`` may be given."""
        if self.trainer.is_global_zero and self.trainer.log_dir is not None:
            atomic_write(Path(self.trainer.log_dir) / "tokenizer.json",
                         lambda tmp: tmp.write_text(self.hparams.tokenizer_json))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse the weights of a model trained with another tokenizer (their token ids mean other text)."""
        theirs = checkpoint.get("hyper_parameters", {}).get("tokenizer_json")
        if theirs is None:
            return
        other = tokenizer_from_json(theirs, "the checkpoint's tokenizer")
        if other.fingerprint != self.tokenizer.fingerprint:
            raise ValueError(f"the checkpoint's model was trained with another tokenizer ({other.describe()}, "
                             f"sha256 {other.fingerprint[:12]}) than this run's datamodule built "
                             f"({self.tokenizer.describe()}, sha256 {self.tokenizer.fingerprint[:12]}); pass "
                             "--data.tokenizer_file <the run's tokenizer.json>")

    # ------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        h = self.hparams
        optimizer = torch.optim.AdamW(weight_decay_groups(self, h.weight_decay), lr=h.lr, betas=(0.9, 0.95))
        if h.budget_minutes is None:
            total = self.trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ValueError("LanguageModel: the cosine needs a step count (trainer.max_steps) or a time budget "
                                 "(model.budget_minutes with trainer.max_time)")
            total = max(1, int(total))
            warmup = min(h.warmup_steps, total // 2)
        else:
            total, warmup = 0, h.warmup_steps  # the time budget decides the length

        def multiplier(step: int) -> float:
            return lr_multiplier(step, warmup_steps=warmup, progress=self.schedule_progress(step, warmup, total),
                                 schedule="cosine", final_ratio=h.min_lr_ratio)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
