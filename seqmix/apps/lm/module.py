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

Objectives (``objective``): ``next_token`` (the above); ``ftp``, Future Token Prediction
(:mod:`~seqmix.apps.lm.ftp`: the FTP loss shapes the stack, the tied head is trained on the detached top-layer
vectors, so ``{stage}/bpc`` is still the LM head's next-token bits per byte; ``{stage}/ftp_loss`` is the
decoder's weighted loss); ``bico``, BICO fine-tuning (:mod:`~seqmix.apps.lm.bico`: bidirectional attention and
mask denoising in training; validation and test stay causal next-token bits per byte). Every objective logs
``{stage}/adjacent_cos`` in validation and test (FTP's smoothness of the top-layer vectors). ``init_from``:
start ``fit`` from the weights of another lm checkpoint (a fine-tuning run, e.g. BICO's).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from typing import Literal

from seqmix.apps.files import atomic_write
from seqmix.apps.lm.bico import BICOObjective, check_bidirectional
from seqmix.apps.lm.data import IGNORE_INDEX
from seqmix.apps.lm.ftp import FutureTokenHead, adjacent_cosine
from seqmix.apps.lm.metrics import BitsPerByte, bits_per_byte
from seqmix.apps.lm.model import CausalLM, Positions
from seqmix.apps.lm.tokenizer import tokenizer_from_json
from seqmix.apps.module import (STAGES, StagedModule, TimeBudgetSchedule, lr_multiplier, read_checkpoint,
                                weight_decay_groups)
from seqmix.core.blocks import ChannelMixerKind, MixerFactory, NormKind

Objective = Literal["next_token", "ftp", "bico"]


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
        objective: ``next_token``, ``ftp`` or ``bico`` (module docstring).
        ftp_tokens, ftp_pseudo_len, ftp_layers, ftp_gamma, ftp_positions: FTP's N, L, decoder blocks, loss decay g
            and positions sampled per row (:class:`~seqmix.apps.lm.ftp.FutureTokenHead`); used by ``ftp`` only.
        bico_mask_ratio, bico_span: BICO's masked fraction and span (:class:`~seqmix.apps.lm.bico.BICOObjective`).
        init_from: an lm checkpoint whose network weights ``fit`` starts from (not when resuming a run).
    """

    def __init__(self, tokenizer_json: str, mixer: MixerFactory | None = None,
                 layer_mixers: list[MixerFactory] | None = None, max_len: int = 256,
                 d_model: int = 128, n_layers: int = 4, positions: Positions = "rotary", mlp_ratio: float = 4.0,
                 mlp: ChannelMixerKind = "glu", norm: NormKind = "layernorm", dropout: float = 0.0,
                 lr: float = 1e-3, weight_decay: float = 0.1, warmup_steps: int = 100, min_lr_ratio: float = 0.1,
                 budget_minutes: float | None = None, objective: Objective = "next_token", ftp_tokens: int = 8,
                 ftp_pseudo_len: int = 4, ftp_layers: int = 2, ftp_gamma: float = 0.8,
                 ftp_positions: int | None = None, bico_mask_ratio: float = 0.3, bico_span: int = 4,
                 init_from: str | None = None):
        super().__init__()
        if objective not in ("next_token", "ftp", "bico"):
            raise ValueError(f"LanguageModel: objective={objective!r} is unknown; choose 'next_token', 'ftp' (Future "
                             "Token Prediction) or 'bico' (bidirectional mask-denoising fine-tuning)")
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
        self.ftp = (FutureTokenHead(d_model, n_future=ftp_tokens, pseudo_len=ftp_pseudo_len, n_layers=ftp_layers,
                                    gamma=ftp_gamma, sample_positions=ftp_positions) if objective == "ftp" else None)
        self.bico = BICOObjective(d_model, mask_ratio=bico_mask_ratio, span=bico_span) if objective == "bico" else None
        if self.bico is not None:
            check_bidirectional(self.net.stack)

    def forward(self, tokens: Tensor) -> Tensor:
        """Next-token logits ``[B, T] -> [B, T, V]``."""
        return self.net(tokens)

    def token_nats(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """The negative log-likelihood (nats) of every target, 0 on ``IGNORE_INDEX``: ``[B, T]``."""
        logits = self.net(inputs)  # [B, T, V]
        nats = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="none")  # [B * T]
        return nats.view_as(targets)  # [B * T] -> [B, T]

    def objective_loss(self, inputs: Tensor, targets: Tensor, stage: str) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss to minimise, next-token nats [B, T] of the LM head, top-layer vectors [B, T, D])`` of a batch
        under ``objective`` (BICO's loss in training only; its evaluation is causal next-token)."""
        hidden = self.net.stack(self.net.embed_tokens(inputs))  # [B, T, D]
        head_input = hidden.detach() if self.ftp is not None else hidden  # FTP: the head does not shape the stack
        logits = self.net.token_logits(head_input)  # [B, T, V]
        nats = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="none").view_as(targets)  # [B * T] -> [B, T]
        loss = nats.sum() / (targets != IGNORE_INDEX).sum().clamp(min=1)
        if self.ftp is not None:
            ftp_loss, _ = self.ftp(hidden, targets, self.net.embed)
            self.log(f"{stage}/ftp_loss", ftp_loss, on_step=stage == "train", on_epoch=stage != "train",
                     batch_size=inputs.shape[0])
            loss = loss + ftp_loss
        elif self.bico is not None and stage == "train":
            loss = self.bico(self.net, inputs, targets)
        return loss, nats, hidden

    def shared_step(self, batch: tuple[Tensor, Tensor, Tensor], stage: str) -> Tensor:
        inputs, targets, nbytes = batch
        objective_loss, nats, hidden = self.objective_loss(inputs, targets, stage)  # nats: [B, T]
        count = int((targets != IGNORE_INDEX).sum())
        loss = nats.sum() / max(count, 1)
        training = stage == "train"
        if not training:
            self.log(f"{stage}/adjacent_cos", adjacent_cosine(hidden, targets != IGNORE_INDEX), on_step=False,
                     on_epoch=True, batch_size=count)
        self.log(f"{stage}/loss", loss, on_step=training, on_epoch=not training, prog_bar=True, batch_size=count,
                 sync_dist=not training)
        if training:
            self.log("train/bpc", bits_per_byte(nats.detach().sum(), nbytes.sum()).float(), on_step=True,
                     on_epoch=False, batch_size=count)
        else:
            self.bpc[stage].update(nats.sum(), nbytes.sum())
            self.log(f"{stage}/bpc", self.bpc[stage], on_step=False, on_epoch=True, prog_bar=True, batch_size=count)
        return objective_loss if training else loss

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

    def on_train_start(self) -> None:
        """``init_from``: the network's weights from another lm checkpoint, unless ``fit`` resumes a run."""
        super().on_train_start()
        if self.hparams.init_from is None or self.trainer.ckpt_path is not None:
            return
        hint = "give model.init_from the best.ckpt of a `seqmix lm fit` run (e.g. configs/lm/shakespeare_char.yaml)"
        state = read_checkpoint(self.hparams.init_from, "lm", hint, needs=("state_dict",))["state_dict"]
        weights = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
        try:
            self.net.load_state_dict(weights)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[-1].strip()
            raise ValueError(f"model.init_from {self.hparams.init_from}: its network is not this config's "
                             f"({first}); give the same mixer, d_model, n_layers and positions as that run") from None

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
