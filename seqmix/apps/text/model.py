"""REDAffectiveLM (Kadan et al. 2024) and its baselines, on one LightningModule.

Two branches, fused::

    context  : MiniLM-L6 token states [B, L, C] (frozen and cached; the top ``context_trainable_layers``
               layers fine-tuned on the cached states below them) -> pool (``context_pool``: masked
               mean, [CLS], or additive attention) -> [B, C]
    affect   : affect-enriched word features [B, W, F]  (GloVe 50d + NRC EmoLex + NRC intensity)
               -> Linear -> rnn mixer (Bi-LSTM) -> attention mixer (self, non-causal, masked)
               -> attention pooling (the paper's word attention; its weights feed --explain) -> [B, D]
    fusion   : concat -> dropout -> Linear -> ReLU -> dropout -> Linear -> softmax over K emotions

The recurrence and the attention are registered mixers injected as factories
``MixerFactory`` (LightningCLI ``class_path``), so either can be swapped from the
config. A branch is on when its input width (linked from the datamodule) is > 0, which gives
the baselines with the same code: Bi-LSTM + attention over plain GloVe (``word_features: glove``,
``context: false``) and the transformer branch alone (``word_features: none``). The TF-IDF +
ridge baseline is :func:`fit_tfidf_ridge`.

Loss: MSE between the predicted and gold distributions (the paper), or ``kl`` (KL(gold || pred)).
Optimiser: AdamW, everything but the fine-tuned encoder layers at ``lr`` and the encoder layers at
``context_lr`` (the top one; with ``context_lr_decay`` < 1 each layer's rate is that factor times
the rate of the layer above: layer-wise learning-rate decay); ``lr_schedule: linear`` warms them up
linearly over the first ``warmup_ratio`` of the training steps and then decays them linearly to 0
(per step). ``context_lora_rank`` > 0 trains LoRA adapters on those layers instead of their weights.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.apps.text.embeddings import additive_mask, load_encoder
from seqmix.apps.text.metrics import emotion_metrics
from seqmix.core.blocks import MixerFactory, make_norm
from seqmix.apps.module import StagedModule, lr_multiplier, step_progress


class AttentionPool(nn.Module):
    """Additive attention pooling: ``a = softmax_t(v . tanh(W h_t))`` over unmasked words, ``sum_t a_t h_t``."""

    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
        self.score = nn.Linear(d_model, 1, bias=False)

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``h: [B, T, D]``, ``mask: [B, T]`` -> pooled ``[B, D]``, weights ``[B, T]`` (0 on padding)."""
        logits = self.score(torch.tanh(self.proj(h))).squeeze(-1)  # [B, T]
        logits = logits.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # an all-padding row (no known word) -> zeros
        return torch.einsum("bt,btd->bd", weights, h), weights


class AffectBranch(nn.Module):
    """Word features -> rnn mixer -> attention mixer (residual, pre-norm) -> attention pooling."""

    def __init__(self, word_dim: int, d_model: int, rnn: MixerFactory,
                 attention: MixerFactory | None, dropout: float):
        super().__init__()
        self.inp = nn.Linear(word_dim, d_model)
        self.rnn = rnn(d_model)
        self.attention = attention(d_model) if attention is not None else None
        for role, m in (("rnn", self.rnn), ("attention", self.attention)):
            if m is not None and m.causal:
                raise ValueError(f"the affect branch reads whole headlines: its {role} mixer must be non-causal "
                                 f"(set causal: false in its init_args), got {type(m).__name__}(causal=True)")
        if self.attention is not None:
            if not self.attention.supports_mask:
                raise ValueError(f"the attention mixer {type(self.attention).__name__} takes no key mask; "
                                 "headlines are padded, so use a masked attention mixer (e.g. softmax)")
            self.norm = make_norm("layernorm", d_model)
        self.dropout = nn.Dropout(dropout)
        self.pool = AttentionPool(d_model)

    def forward(self, words: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``words: [B, W, F]``, ``mask: [B, W]`` -> ``[B, D]`` and word weights ``[B, W]``."""
        x = self.inp(words) * mask[..., None]  # [B, W, D], padding zeroed
        x = self.rnn(x, mask=mask) if self.rnn.supports_mask else self.rnn(x)
        x = self.dropout(x) * mask[..., None]
        if self.attention is not None:
            x = x + self.dropout(self.attention(self.norm(x), mask=mask))
        return self.pool(x, mask)


class ContextTop(nn.Module):
    """The top ``n_layers`` layers of the pretrained encoder, trained on the cached states below them:
    every weight (``lora_rank`` 0), or only rank-``lora_rank`` LoRA adapters (peft) on each of their
    linear maps, the pretrained weights frozen."""

    def __init__(self, n_layers: int, lora_rank: int = 0):
        super().__init__()
        encoder = load_encoder()
        total = len(encoder.encoder.layer)
        if not 1 <= n_layers <= total:
            raise ValueError(f"context_trainable_layers must be in [0, {total}], got {n_layers}")
        if lora_rank < 0:
            raise ValueError(f"context_lora_rank must be >= 0 (0 = fine-tune every weight), got {lora_rank}")
        # load_encoder returns eval mode; these layers are trained, so they follow the parent's
        # train()/eval() from here (the pretrained config's dropout is active while fine-tuning)
        self.layers = nn.ModuleList(encoder.encoder.layer[total - n_layers:]).train()
        if lora_rank:
            from peft import LoraConfig, inject_adapter_in_model

            targets = sorted({name.rpartition(".")[2] for name, m in self.layers.named_modules()
                              if isinstance(m, nn.Linear)})  # query, key, value, dense
            config = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules=targets, lora_dropout=0.0)
            inject_adapter_in_model(config, self.layers)  # in place; freezes every non-adapter weight

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        """``h: [B, L, C]`` states below these layers, ``mask: [B, L]`` -> the encoder's top states ``[B, L, C]``."""
        bias = additive_mask(mask, h.dtype)  # [B, 1, 1, L]
        for layer in self.layers:
            out = layer(h, bias)
            h = out[0] if isinstance(out, tuple) else out
        return h


def masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    """``[B, L, C]``, ``[B, L]`` -> mean over unmasked positions ``[B, C]`` (sentence-transformers pooling)."""
    m = mask[..., None].to(states.dtype)  # [B, L, 1]
    return (states * m).sum(1) / m.sum(1).clamp_min(1.0)


def cls_pool(states: Tensor, mask: Tensor) -> Tensor:
    """``[B, L, C]`` -> the first token's state ``[B, C]`` (BERT's [CLS]; the tokenizer puts it first)."""
    return states[:, 0]


class EmotionRegressor(StagedModule):
    """REDAffectiveLM when both branches are on; ``word_dim``/``context_dim``/``n_emotions`` come from the data."""

    def __init__(self, rnn: MixerFactory | None = None, attention: MixerFactory | None = None,
                 n_emotions: int = 5, word_dim: int = 64, context_dim: int = 384, d_model: int = 128,
                 fusion_hidden: int = 256, dropout: float = 0.3, context_dropout: float = 0.1,
                 context_trainable_layers: int = 0, context_pool: Literal["mean", "cls", "attention"] = "mean",
                 loss: Literal["mse", "kl"] = "mse", lr: float = 1e-3, context_lr: float = 5e-5,
                 context_lr_decay: float = 1.0, context_lora_rank: int = 0, weight_decay: float = 1e-4,
                 lr_schedule: Literal["constant", "linear"] = "constant",
                 warmup_ratio: float = 0.0):
        super().__init__()
        if loss not in ("mse", "kl"):
            raise ValueError(f"EmotionRegressor: loss={loss!r} is unknown; choose 'mse' or 'kl'")
        if context_pool not in ("mean", "cls", "attention"):
            raise ValueError(f"EmotionRegressor: context_pool={context_pool!r} is unknown; "
                             "choose 'mean', 'cls' or 'attention'")
        if lr_schedule not in ("constant", "linear") or not 0 <= warmup_ratio < 1:
            raise ValueError(f"EmotionRegressor: need lr_schedule in ('constant', 'linear') and 0 <= warmup_ratio < 1; "
                             f"got {lr_schedule!r}, {warmup_ratio}")
        if lr_schedule == "constant" and warmup_ratio > 0:
            raise ValueError("EmotionRegressor: warmup_ratio > 0 needs lr_schedule: linear "
                             "(warm-up, then linear decay)")
        if not 0 < context_lr_decay <= 1:
            raise ValueError(f"EmotionRegressor: context_lr_decay must be in (0, 1] (1 = one rate for every encoder "
                             f"layer), got {context_lr_decay}")
        if word_dim <= 0 and context_dim <= 0:
            raise ValueError("EmotionRegressor: both branches are off (word_dim = context_dim = 0)")
        if word_dim > 0 and rnn is None:
            raise ValueError("EmotionRegressor: the affect branch is on (word_dim > 0) but no rnn mixer is given; "
                             "set model.rnn (e.g. class_path: seqmix.core.mixers.rnn.LSTM, bidirectional: true)")
        if n_emotions < 2 or lr <= 0 or not 0 <= dropout < 1:
            raise ValueError(f"EmotionRegressor: need n_emotions >= 2, lr > 0, 0 <= dropout < 1; "
                             f"got {n_emotions}, {lr}, {dropout}")
        # under LightningCLI (`seqmix text fit`) the mixers are stored as their class_path / init_args, so
        # a checkpoint rebuilds them (load_from_checkpoint) and holds no pickled code (weights_only loads)
        self.save_hyperparameters()
        self.affect = AffectBranch(word_dim, d_model, rnn, attention, dropout) if word_dim > 0 else None
        self.context_top = (ContextTop(context_trainable_layers, context_lora_rank)
                            if context_dim > 0 and context_trainable_layers > 0 else None)
        self.context_dropout = nn.Dropout(context_dropout)
        self.context_attn = AttentionPool(context_dim) if context_dim > 0 and context_pool == "attention" else None
        fused = (d_model if word_dim > 0 else 0) + max(context_dim, 0)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(fused, fusion_hidden), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(fusion_hidden, n_emotions))
        self.outputs: dict[str, list[tuple[Tensor, Tensor]]] = {}

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """Emotion distribution ``[B, K]`` and the word attention weights ``[B, W]`` (None without words)."""
        parts, weights = [], None
        if self.hparams.context_dim > 0:
            ctx = batch["context"]
            if ctx.shape[-1] != self.hparams.context_dim:
                raise ValueError(f"context states are {tuple(ctx.shape)} but the model expects width "
                                 f"{self.hparams.context_dim}; the checkpoint and the features disagree")
            if self.context_top is not None:
                ctx = self.context_top(ctx, batch["context_mask"])
            parts.append(self.context_dropout(self.pool_context(ctx, batch["context_mask"])))
        if self.affect is not None:
            words = batch["words"]
            if words.shape[-1] != self.hparams.word_dim:
                raise ValueError(f"word features are {tuple(words.shape)} but the model expects width "
                                 f"{self.hparams.word_dim}; the checkpoint and the features disagree")
            pooled, weights = self.affect(words, batch["word_mask"])
            parts.append(pooled)
        return torch.softmax(self.head(torch.cat(parts, dim=-1)), dim=-1), weights

    def pool_context(self, states: Tensor, mask: Tensor) -> Tensor:
        """Token states ``[B, L, C]`` and mask ``[B, L]`` -> ``[B, C]`` (``context_pool``)."""
        if self.hparams.context_pool == "cls":
            return cls_pool(states, mask)
        if self.context_attn is not None:
            return self.context_attn(states, mask)[0]
        return masked_mean(states, mask)

    def loss_fn(self, pred: Tensor, target: Tensor) -> Tensor:
        if self.hparams.loss == "mse":
            return F.mse_loss(pred, target)
        return F.kl_div(pred.clamp_min(1e-8).log(), target, reduction="batchmean")

    def shared_step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        pred, _ = self(batch)
        loss = self.loss_fn(pred, batch["target"])
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage == "val",
                 batch_size=len(pred))
        if stage != "train":
            self.outputs.setdefault(stage, []).append((pred.detach().cpu(), batch["target"].cpu()))
        return loss

    def _log_metrics(self, stage: str) -> None:
        collected = self.outputs.pop(stage, [])
        if not collected:
            return
        pred = torch.cat([p for p, _ in collected]).double().numpy()
        gold = torch.cat([g for _, g in collected]).double().numpy()
        for name, value in emotion_metrics(pred, gold).items():
            self.log(f"{stage}/{name}", value, prog_bar=name in ("acc@1", "rmse"))

    def on_validation_epoch_end(self):
        self._log_metrics("val")

    def on_test_epoch_end(self):
        self._log_metrics("test")

    def predict_step(self, batch, batch_idx) -> dict[str, Tensor]:
        pred, weights = self(batch)
        return {"row": batch["row"], "pred": pred, "weights": weights if weights is not None else pred.new_zeros(0)}

    # ------------------------------------------------------- checkpoints
    def frozen_pretrained_keys(self) -> list[str]:
        """``state_dict`` keys of the pretrained encoder weights that LoRA fine-tuning leaves frozen."""
        if self.context_top is None:
            return []
        return [f"context_top.{name}" for name, p in self.context_top.named_parameters() if not p.requires_grad]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Leave out the frozen pretrained weights (LoRA): the encoder package holds them, so a
        checkpoint stores only what training changed (a few MB instead of 45)."""
        super().on_save_checkpoint(checkpoint)
        for key in self.frozen_pretrained_keys():
            del checkpoint["state_dict"][key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Put back the frozen pretrained weights that :meth:`on_save_checkpoint` left out (this model
        loaded them from the encoder package when it was built)."""
        own = self.state_dict()
        for key in self.frozen_pretrained_keys():
            checkpoint["state_dict"].setdefault(key, own[key])

    def configure_optimizers(self):
        h = self.hparams
        layers = list(self.context_top.layers) if self.context_top is not None else []  # bottom to top
        ids = {id(p) for layer in layers for p in layer.parameters()}
        groups = [{"params": [p for p in self.parameters() if id(p) not in ids], "lr": h.lr}]
        groups += [{"params": [p for p in layer.parameters() if p.requires_grad],  # per layer, the top at context_lr
                    "lr": h.context_lr * h.context_lr_decay ** (len(layers) - 1 - i)} for i, layer in enumerate(layers)]
        optimizer = torch.optim.AdamW(groups, lr=h.lr, weight_decay=h.weight_decay)
        if h.lr_schedule == "constant":
            return optimizer
        schedule = linear_warmup_decay(int(self.trainer.estimated_stepping_batches), h.warmup_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def linear_warmup_decay(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """LR multiplier at a step: 0 -> 1 linearly over ``warmup_ratio * total_steps`` steps, then 1 -> 0 linearly."""
    if total_steps < 1:
        raise ValueError(f"linear lr schedule: need at least 1 training step, got {total_steps}")
    warmup = int(round(warmup_ratio * total_steps))
    return lambda step: lr_multiplier(step, warmup_steps=warmup, progress=step_progress(step, warmup, total_steps),
                                      schedule="linear", final_ratio=0.0)


# ----------------------------------------------------------- TF-IDF + ridge
def to_distribution(scores: np.ndarray) -> np.ndarray:
    """Regression outputs -> distributions: clip at 0, divide by the row sum (uniform for an all-zero row)."""
    clipped = np.clip(scores, 0.0, None)
    sums = clipped.sum(1, keepdims=True)
    return np.where(sums > 0, clipped / np.where(sums > 0, sums, 1.0), 1.0 / scores.shape[1])


def fit_tfidf_ridge(train_texts: Sequence[str], train_targets: np.ndarray, val_texts: Sequence[str],
                    val_targets: np.ndarray, alphas: Sequence[float] = (0.1, 0.3, 1.0, 3.0, 10.0)):
    """TF-IDF (word 1-2 grams, sublinear tf) + ridge; ``alpha`` picked on validation RMSE.

    Returns ``(predict: texts -> [N, K] distributions, chosen alpha)``.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge

    from seqmix.apps.text.metrics import rmse

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    x_train, x_val = vec.fit_transform(train_texts), vec.transform(val_texts)
    best = min(alphas, key=lambda a: rmse(to_distribution(Ridge(alpha=a).fit(x_train, train_targets).predict(x_val)),
                                          val_targets))
    ridge = Ridge(alpha=best).fit(x_train, train_targets)
    return (lambda texts: to_distribution(ridge.predict(vec.transform(texts)))), best
