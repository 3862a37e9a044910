"""A time-attention Bi-LSTM sequence autoencoder for behaviour windows (FinDeepBehaviorCluster).

Encoder: step features ``[B, T, F]`` -> linear -> a recurrence block (default a
bidirectional LSTM mixer) -> an attention block (default softmax attention, padding
masked) -> *time attention* pooling -> embedding ``[B, E]``. Time attention scores each step
from its hidden state and its time gap, ``score_t = v . tanh(W h_t + u * gap_t)``, so how
recent and how bursty the events are shapes the summary, not only their content.

Decoder: the embedding, broadcast over time with sinusoidal positions -> a recurrence block
-> linear back to ``F``; the loss is the mean squared error on the real (unpadded) steps.
Training needs no labels. The embedding is what ``seqmix fraud cluster`` clusters (with the
expert features beside it: the "hybrid" features).

The recurrence and the attention are injected mixer factories (``MixerFactory``),
so any registered mixer can replace them from the config. Windows are left-padded; padded
steps are zeroed before every block and the mask goes to every mixer that takes one
(``supports_mask``: attention masks the padded keys, an RNN skips the padded steps); a mixer
without one reads the zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.apps.fraud.data import STEP_FEATURES
from seqmix.core.blocks import MixerBlock, MixerFactory
from seqmix.core.embeddings import SinusoidalPositionalEncoding
from seqmix.apps.module import StagedModule

GAP_FEATURE = STEP_FEATURES.index("log_gap")


class TimeAttentionPool(nn.Module):
    """``h [B, T, D]``, ``gap [B, T]``, ``mask [B, T]`` -> ``[B, D]``: softmax over steps of a time-aware score."""

    def __init__(self, d_model: int, d_attn: int = 32):
        super().__init__()
        self.proj = nn.Linear(d_model, d_attn)
        self.time = nn.Parameter(torch.zeros(d_attn))
        self.score = nn.Linear(d_attn, 1, bias=False)

    def forward(self, h: Tensor, gap: Tensor, mask: Tensor) -> Tensor:
        score = self.score(torch.tanh(self.proj(h) + gap[..., None] * self.time)).squeeze(-1)  # [B, T]
        weight = score.masked_fill(~mask, float("-inf")).softmax(-1)  # [B, T]
        return (weight[..., None] * h).sum(1)


class SequenceAutoencoder(StagedModule):
    """Unsupervised sequence autoencoder; ``embed`` gives the behaviour embedding.

    Args:
        recurrence: factory of the recurrent mixer used in the encoder and the decoder
            (e.g. ``seqmix.core.mixers.rnn.LSTM`` with ``causal: false`` = bidirectional).
        attention: factory of the encoder's attention mixer (e.g. softmax, ``causal: false``).
        n_features: step features per event (linked from the datamodule).
        max_len: longest window (linked from the datamodule's ``window``).
        d_model / d_embed: hidden width / embedding width.
    """

    def __init__(self, recurrence: MixerFactory, attention: MixerFactory,
                 n_features: int = len(STEP_FEATURES), max_len: int = 16, d_model: int = 32, d_embed: int = 16,
                 dropout: float = 0.0, lr: float = 3e-3, weight_decay: float = 0.01):
        super().__init__()
        if n_features < 1 or max_len < 2 or d_model < 1 or d_embed < 1:
            raise ValueError(f"SequenceAutoencoder: need n_features >= 1, max_len >= 2, d_model >= 1, d_embed >= 1; "
                             f"got {n_features}, {max_len}, {d_model}, {d_embed}")
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"SequenceAutoencoder: need lr > 0 and weight_decay >= 0, got {lr}, {weight_decay}")
        self.save_hyperparameters(ignore=["recurrence", "attention"])
        self.inp = nn.Linear(n_features, d_model)
        self.encoder = nn.ModuleList([MixerBlock(d_model, recurrence(d_model), dropout=dropout),
                                      MixerBlock(d_model, attention(d_model), dropout=dropout)])
        for block in self.encoder:
            if block.mixer.causal:
                raise ValueError(f"SequenceAutoencoder: the encoder reads whole windows; build "
                                 f"{type(block.mixer).__name__} with causal: false")
        self.pool = TimeAttentionPool(d_model)
        self.to_embed = nn.Linear(d_model, d_embed)
        self.from_embed = nn.Linear(d_embed, d_model)
        self.positions = SinusoidalPositionalEncoding(d_model, max_len=max_len)
        self.decoder = MixerBlock(d_model, recurrence(d_model), dropout=dropout)
        self.out = nn.Linear(d_model, n_features)

    def check(self, steps: Tensor, mask: Tensor) -> None:
        f, t_max = self.hparams.n_features, self.hparams.max_len
        if steps.dim() != 3 or steps.shape[-1] != f:
            raise ValueError(f"SequenceAutoencoder: steps must be [batch, time, n_features={f}], "
                             f"got {tuple(steps.shape)}")
        if steps.shape[1] > t_max:
            raise ValueError(f"SequenceAutoencoder: window of {steps.shape[1]} steps exceeds max_len={t_max}")
        if mask.shape != steps.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"SequenceAutoencoder: mask must be bool [batch, time]={tuple(steps.shape[:2])}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")

    def embed(self, steps: Tensor, mask: Tensor) -> Tensor:
        """``steps [B, T, F]``, ``mask [B, T]`` (True = a real event) -> embedding ``[B, E]``."""
        self.check(steps, mask)
        keep = mask[..., None].to(steps.dtype)  # [B, T, 1]
        x = self.inp(steps) * keep
        for block in self.encoder:
            x = block(x, mask=mask if block.mixer.supports_mask else None) * keep
        return self.to_embed(self.pool(x, steps[..., GAP_FEATURE], mask))

    def forward(self, steps: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """-> ``(reconstruction [B, T, F], embedding [B, E])``."""
        z = self.embed(steps, mask)
        t = steps.shape[1]
        h = self.positions(self.from_embed(z)[:, None, :].expand(-1, t, -1))  # [B, D] -> [B, T, D]
        return self.out(self.decoder(h)), z

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        steps, mask = batch["steps"], batch["mask"]
        recon, _ = self(steps, mask)
        err = F.mse_loss(recon, steps, reduction="none").mean(-1)  # [B, T]
        return (err * mask).sum() / mask.sum().clamp_min(1)

    def shared_step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        loss = self.loss(batch)
        on_step = stage == "train"
        self.log(f"{stage}/mse", loss, on_step=on_step, on_epoch=not on_step, prog_bar=True,
                 batch_size=len(batch["steps"]))
        return loss

    def predict_step(self, batch, batch_idx) -> dict[str, Tensor]:
        return {"row": batch["row"], "embedding": self.embed(batch["steps"], batch["mask"])}

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
