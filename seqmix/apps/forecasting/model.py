"""Forecasting networks and the LightningModule that trains any of them.

Blocks -> models, top to bottom:

- :class:`DataEmbedding` — Informer's input: value projection (Conv1d, kernel 3, circular
  padding) + sinusoidal positions + a linear map of the time features.
- :class:`PostNormLayer` — the paper's post-norm encoder / decoder layer
  (``x = norm(x + mixer(x))`` [``x = norm(x + cross(x, memory))``] ``x = norm(x + ffn(x))``), built
  from the core's :class:`~seqmix.core.mixer.Mixer` and :class:`~seqmix.core.blocks.ChannelMixer`.
- :class:`Distilling` — self-attention distilling between encoder layers
  (Conv1d + BatchNorm + ELU + max-pool with stride 2: the length halves).
- :class:`Informer` — encoder (layers with distilling, optionally a stack of replicas on
  halved inputs) + generative decoder (``label_len`` known steps, then ``pred_len`` zero
  placeholders, every horizon step in one forward pass). The encoder and decoder
  self-attention are any registered mixers (``MixerFactory``); cross attention is softmax.
- :class:`Transformer` — the vanilla encoder-decoder Transformer (no distilling).
- :class:`PatchTST` — each variable on its own (channel independence), its lookback cut into
  overlapping patches that are the tokens of post-norm layers with any non-causal registered
  mixer (BatchNorm, as the paper), then one linear map from all patch states to the horizon.
- :class:`DLinear` — moving-average decomposition + one linear map per component over time.
- :class:`LastValue` — repeats the last observed value (no parameters).
- :class:`TrainingMean` — the training mean of each variable, zero on the scaled data (no parameters).
- :class:`RevIN` — reversible instance normalisation, a flag of :class:`Forecaster`.
- :class:`Forecaster` — the LightningModule: one shared step, MSE loss, metrics scaled and
  in original units, Informer's per-epoch learning-rate halving.

Every network maps ``(x [B, L, C], x_mark [B, L, F], y_mark [B, label_len + pred_len, F])``
to ``[B, pred_len, n_out]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.apps.forecasting.metrics import ForecastMetrics
from seqmix.core.blocks import ChannelMixer, MixerFactory
from seqmix.core.embeddings import SinusoidalPositionalEncoding
from seqmix.core.mixer import Mixer
from seqmix.core.mixers.softmax import SoftmaxAttention
from seqmix.apps.module import StagedModule


@dataclass(frozen=True)
class ForecastShape:
    """The sizes the data decides, handed to every network."""

    n_vars: int  # input variables
    n_out: int  # forecast variables (n_vars for M, 1 for S / MS: the last input column)
    n_time_features: int
    seq_len: int
    label_len: int
    pred_len: int


# ---------------------------------------------------------------- blocks
class DataEmbedding(nn.Module):
    """``[B, T, C]`` values + ``[B, T, F]`` time features -> ``[B, T, D]``."""

    def __init__(self, n_vars: int, n_time_features: int, d_model: int, dropout: float, max_len: int = 8192):
        super().__init__()
        self.value = nn.Conv1d(n_vars, d_model, kernel_size=3, padding=1, padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.value.weight, mode="fan_in", nonlinearity="leaky_relu")
        self.position = SinusoidalPositionalEncoding(d_model, max_len=max_len)
        self.time = nn.Linear(n_time_features, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, x_mark: Tensor) -> Tensor:
        h = self.value(x.transpose(1, 2)).transpose(1, 2)  # [B, C, T] -> [B, D, T] -> [B, T, D]
        return self.dropout(self.position(h) + self.time(x_mark))


def check_mixer(role: str, mixer: Mixer, d_model: int, causal: bool) -> Mixer:
    if not isinstance(mixer, Mixer):
        raise TypeError(f"{role} must build a seqmix Mixer, got {type(mixer).__name__}")
    if mixer.d_model != d_model:
        raise ValueError(f"{role} built d_model={mixer.d_model}, the model has d_model={d_model}")
    if mixer.causal != causal:
        raise ValueError(f"{role} must be causal={causal} (got {type(mixer).__name__} with causal={mixer.causal}); "
                         f"set causal: {str(causal).lower()} in its init_args")
    return mixer


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the ``D`` features of every token of ``[B, T, D]`` (PatchTST's norm)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)  # [B, T, D] -> [B, D, T] -> [B, T, D]


class PostNormLayer(nn.Module):
    """Informer's post-norm layer: self mixer, [cross attention to ``memory``], feed-forward.

    ``norm``: ``"layer"`` (Informer, Transformer) or ``"batch"`` (:class:`TokenBatchNorm`, PatchTST).
    """

    def __init__(self, d_model: int, mixer: Mixer, *, cross: Mixer | None = None, ffn_ratio: float = 4.0,
                 dropout: float = 0.05, norm: Literal["layer", "batch"] = "layer"):
        super().__init__()
        if norm not in ("layer", "batch"):
            raise ValueError(f"norm={norm!r} is unknown; choose 'layer' or 'batch'")
        self.mixer, self.cross = mixer, cross
        self.ffn = ChannelMixer(d_model, hidden_ratio=ffn_ratio, kind="mlp", dropout=dropout)
        norm_cls = nn.LayerNorm if norm == "layer" else TokenBatchNorm
        self.norms = nn.ModuleList(norm_cls(d_model) for _ in range(3 if cross is not None else 2))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor | None = None) -> Tensor:
        x = self.norms[0](x + self.dropout(self.mixer(x)))
        if self.cross is not None:
            x = self.norms[1](x + self.dropout(self.cross(x, context=memory)))
        return self.norms[-1](x + self.dropout(self.ffn(x)))


class Distilling(nn.Module):
    """Conv1d(k=3, circular) + BatchNorm + ELU + MaxPool(k=3, stride 2): ``[B, T, D] -> [B, ceil(T/2), D]``."""

    def __init__(self, d_model: int):
        super().__init__()
        self.conv = nn.Conv1d(d_model, d_model, kernel_size=3, padding=1, padding_mode="circular")
        self.norm = nn.BatchNorm1d(d_model)
        self.pool = nn.MaxPool1d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.elu(self.norm(self.conv(x.transpose(1, 2))))  # [B, T, D] -> [B, D, T]
        return self.pool(h).transpose(1, 2)  # [B, D, T/2] -> [B, T/2, D]


class Encoder(nn.Module):
    """``n_layers`` post-norm layers with distilling between them (when ``distil``), a final norm."""

    def __init__(self, d_model: int, n_layers: int, mixer: MixerFactory, *, distil: bool, ffn_ratio: float,
                 dropout: float):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"encoder layers must be >= 1, got {n_layers}")
        self.layers = nn.ModuleList(
            PostNormLayer(d_model, check_mixer("encoder_mixer", mixer(d_model), d_model, causal=False),
                          ffn_ratio=ffn_ratio, dropout=dropout) for _ in range(n_layers))
        self.distil = nn.ModuleList(Distilling(d_model) for _ in range(n_layers - 1)) if distil else None
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.distil is not None and i < len(self.distil):
                x = self.distil[i](x)
        return self.norm(x)


# ---------------------------------------------------------------- models
class Informer(nn.Module):
    """Informer (Zhou et al., AAAI 2021) with swappable encoder / decoder self-attention.

    ``stack``: layer counts of the encoder replicas of Informer's stack (e.g. ``[3, 2, 1]``);
    replica ``i`` reads the last ``seq_len / 2**i`` embedded steps and the outputs are joined along
    time. ``None`` is the single encoder of ``e_layers`` layers.
    """

    def __init__(self, shape: ForecastShape, *, d_model: int = 64, e_layers: int = 2, d_layers: int = 1,
                 ffn_ratio: float = 4.0, dropout: float = 0.05, distil: bool = True,
                 stack: list[int] | None = None, encoder_mixer: MixerFactory | None = None,
                 decoder_mixer: MixerFactory | None = None, cross_heads: int = 4):
        super().__init__()
        self.shape = shape
        encoder_mixer = encoder_mixer or (lambda d: SoftmaxAttention(d, n_heads=cross_heads, causal=False))
        decoder_mixer = decoder_mixer or (lambda d: SoftmaxAttention(d, n_heads=cross_heads, causal=True))
        self.enc_embedding = DataEmbedding(shape.n_vars, shape.n_time_features, d_model, dropout)
        self.dec_embedding = DataEmbedding(shape.n_vars, shape.n_time_features, d_model, dropout)
        counts = stack if stack is not None else [e_layers]
        if not counts or any(c < 1 for c in counts):
            raise ValueError(f"stack must be a non-empty list of positive layer counts, got {stack}")
        if shape.seq_len // 2 ** (len(counts) - 1) < 1:
            raise ValueError(f"stack of {len(counts)} replicas needs seq_len >= {2 ** (len(counts) - 1)}")
        self.encoders = nn.ModuleList(
            Encoder(d_model, n, encoder_mixer, distil=distil, ffn_ratio=ffn_ratio, dropout=dropout) for n in counts)
        self.decoder = nn.ModuleList(
            PostNormLayer(d_model, check_mixer("decoder_mixer", decoder_mixer(d_model), d_model, causal=True),
                          cross=SoftmaxAttention(d_model, n_heads=cross_heads, causal=False),
                          ffn_ratio=ffn_ratio, dropout=dropout) for _ in range(d_layers))
        self.dec_norm = nn.LayerNorm(d_model)
        self.projection = nn.Linear(d_model, shape.n_out)

    def forward(self, x: Tensor, x_mark: Tensor, y_mark: Tensor) -> Tensor:
        s = self.shape
        h = self.enc_embedding(x, x_mark)  # [B, L, D]
        memory = torch.cat([enc(h[:, h.shape[1] - h.shape[1] // 2 ** i:]) for i, enc in enumerate(self.encoders)],
                           dim=1)  # [B, S, D]
        placeholders = x.new_zeros(x.shape[0], s.pred_len, x.shape[2])  # [B, pred_len, C]
        dec_in = torch.cat([x[:, x.shape[1] - s.label_len:], placeholders], dim=1)  # [B, label_len + pred_len, C]
        h = self.dec_embedding(dec_in, y_mark)
        for layer in self.decoder:
            h = layer(h, memory)
        return self.projection(self.dec_norm(h))[:, -s.pred_len:]  # [B, pred_len, n_out]


class Transformer(Informer):
    """The vanilla encoder-decoder Transformer of the Informer paper's baselines: no distilling."""

    def __init__(self, shape: ForecastShape, *, d_model: int = 64, e_layers: int = 2, d_layers: int = 1,
                 ffn_ratio: float = 4.0, dropout: float = 0.05, encoder_mixer: MixerFactory | None = None,
                 decoder_mixer: MixerFactory | None = None, cross_heads: int = 4):
        super().__init__(shape, d_model=d_model, e_layers=e_layers, d_layers=d_layers, ffn_ratio=ffn_ratio,
                         dropout=dropout, distil=False, stack=None, encoder_mixer=encoder_mixer,
                         decoder_mixer=decoder_mixer, cross_heads=cross_heads)


class PatchTST(nn.Module):
    """PatchTST (Nie et al., ICLR 2023, "A Time Series is Worth 64 Words") with a swappable mixer.

    Channel independence: every variable's lookback is forecast on its own by the same weights.
    The lookback, padded at the end by ``stride`` copies of its last value, is cut into patches of
    ``patch_len`` steps every ``stride`` steps (``N = (seq_len - patch_len) // stride + 2`` tokens);
    a linear map and learned positions embed them; ``n_layers`` post-norm layers (``mixer``, any
    non-causal registered mixer, softmax attention by default; BatchNorm) mix the patches; a
    linear head maps the flattened ``N * d_model`` states to the ``pred_len`` steps. Meant to run
    with the Forecaster's ``revin: true`` (the paper's instance normalisation). Left out: the
    paper's residual attention scores (each layer adding the previous layer's pre-softmax scores),
    which only softmax attention has. Time features are not used (as the paper).
    """

    def __init__(self, shape: ForecastShape, *, patch_len: int = 16, stride: int = 8, d_model: int = 16,
                 n_layers: int = 3, ffn_ratio: float = 8.0, dropout: float = 0.3, head_dropout: float = 0.0,
                 mixer: MixerFactory | None = None):
        super().__init__()
        if not 1 <= patch_len <= shape.seq_len or not 1 <= stride <= patch_len:
            raise ValueError(f"PatchTST needs 1 <= patch_len <= seq_len ({shape.seq_len}) and "
                             f"1 <= stride <= patch_len, got patch_len={patch_len}, stride={stride}")
        if n_layers < 1:
            raise ValueError(f"PatchTST needs n_layers >= 1, got {n_layers}")
        self.shape, self.patch_len, self.stride = shape, patch_len, stride
        self.n_patches = (shape.seq_len - patch_len) // stride + 2  # + 1: the end padding's patch
        mixer = mixer or (lambda d: SoftmaxAttention(d, n_heads=4, causal=False))
        self.embed = nn.Linear(patch_len, d_model)
        self.position = nn.Parameter(torch.empty(self.n_patches, d_model).uniform_(-0.02, 0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            PostNormLayer(d_model, check_mixer("mixer", mixer(d_model), d_model, causal=False), ffn_ratio=ffn_ratio,
                          dropout=dropout, norm="batch") for _ in range(n_layers))
        self.head_dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(self.n_patches * d_model, shape.pred_len)

    def patches(self, x: Tensor) -> Tensor:
        """``[B, L, C]`` -> ``[B, C, N, patch_len]``."""
        z = x.transpose(1, 2)  # [B, L, C] -> [B, C, L]
        z = torch.cat([z, z[..., -1:].expand(-1, -1, self.stride)], dim=-1)  # [B, C, L + stride]
        return z.unfold(-1, self.patch_len, self.stride)  # [B, C, N, patch_len]

    def forward(self, x: Tensor, x_mark: Tensor, y_mark: Tensor) -> Tensor:
        b, _, c = x.shape
        h = self.dropout(self.embed(self.patches(x)) + self.position)  # [B, C, N, D]
        h = h.reshape(b * c, self.n_patches, -1)  # [B*C, N, D]: every variable on its own
        for layer in self.layers:
            h = layer(h)
        h = h.reshape(b, c, -1)  # [B*C, N, D] -> [B, C, N*D]
        y = self.head(self.head_dropout(h))  # [B, C, pred_len]
        return y.transpose(1, 2)[..., -self.shape.n_out:]  # [B, pred_len, n_out]


class DLinear(nn.Module):
    """DLinear (Zeng et al., AAAI 2023): trend = moving average, seasonal = rest, one Linear each over time."""

    def __init__(self, shape: ForecastShape, *, kernel_size: int = 25, individual: bool = False):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}")
        self.shape, self.kernel_size = shape, kernel_size
        n = shape.n_vars if individual else 1
        self.seasonal = nn.ModuleList(nn.Linear(shape.seq_len, shape.pred_len) for _ in range(n))
        self.trend = nn.ModuleList(nn.Linear(shape.seq_len, shape.pred_len) for _ in range(n))
        for lin in (*self.seasonal, *self.trend):  # start from the average of the window
            nn.init.constant_(lin.weight, 1.0 / shape.seq_len)

    def moving_average(self, x: Tensor) -> Tensor:
        pad = (self.kernel_size - 1) // 2
        padded = torch.cat([x[:, :1].expand(-1, pad, -1), x, x[:, -1:].expand(-1, pad, -1)], dim=1)  # [B, L+2p, C]
        return F.avg_pool1d(padded.transpose(1, 2), self.kernel_size, stride=1).transpose(1, 2)  # [B, L, C]

    def forward(self, x: Tensor, x_mark: Tensor, y_mark: Tensor) -> Tensor:
        trend = self.moving_average(x)
        seasonal, trend = (x - trend).transpose(1, 2), trend.transpose(1, 2)  # [B, C, L]
        if len(self.seasonal) == 1:
            y = self.seasonal[0](seasonal) + self.trend[0](trend)  # [B, C, pred_len]
        else:
            y = torch.stack([s(seasonal[:, i]) + t(trend[:, i])
                             for i, (s, t) in enumerate(zip(self.seasonal, self.trend))], dim=1)  # [B, C, pred_len]
        return y.transpose(1, 2)[..., -self.shape.n_out:]  # [B, pred_len, n_out]


class LastValue(nn.Module):
    """Repeats the last observed value over the horizon."""

    def __init__(self, shape: ForecastShape):
        super().__init__()
        self.shape = shape

    def forward(self, x: Tensor, x_mark: Tensor, y_mark: Tensor) -> Tensor:
        return x[:, -1:, -self.shape.n_out:].expand(-1, self.shape.pred_len, -1)  # [B, pred_len, n_out]


class TrainingMean(nn.Module):
    """Forecasts each variable's training mean: zero on the standardised data (the scaler is fitted on
    the training rows). The floor a forecaster must clear on the scaled MSE."""

    def __init__(self, shape: ForecastShape):
        super().__init__()
        self.shape = shape

    def forward(self, x: Tensor, x_mark: Tensor, y_mark: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], self.shape.pred_len, self.shape.n_out)  # [B, pred_len, n_out]


class RevIN(nn.Module):
    """Reversible instance normalisation (Kim et al., ICLR 2022) over time, per variable."""

    def __init__(self, n_vars: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_vars))
        self.bias = nn.Parameter(torch.zeros(n_vars))

    def normalize(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        mean = x.mean(dim=1, keepdim=True).detach()  # [B, 1, C]
        std = (x.var(dim=1, keepdim=True, unbiased=False) + self.eps).sqrt().detach()
        return (x - mean) / std * self.weight + self.bias, (mean, std)

    def denormalize(self, y: Tensor, stats: tuple[Tensor, Tensor]) -> Tensor:
        n = y.shape[-1]  # the forecast variables are the last n inputs
        mean, std = stats[0][..., -n:], stats[1][..., -n:]
        return (y - self.bias[-n:]) / (self.weight[-n:] + self.eps * self.eps) * std + mean


# ----------------------------------------------------------- Lightning
class Forecaster(StagedModule):
    """Trains any forecasting network (``network``, a class_path taking :class:`ForecastShape`).

    The sizes come from the datamodule (``links`` in ``app.py``). ``lr_decay`` multiplies the
    learning rate after every epoch (Informer halves it: 0.5). ``revin`` wraps the network in
    reversible instance normalisation. The training scaler is copied into the checkpoint, so
    ``predict`` can report original units.
    """

    def __init__(self, network: Callable[[ForecastShape], nn.Module], *, n_vars: int = 7, n_out: int = 7,
                 n_time_features: int = 4, seq_len: int = 96, label_len: int = 48, pred_len: int = 96,
                 lr: float = 1e-4, lr_decay: float = 0.5, weight_decay: float = 0.0, revin: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.shape = ForecastShape(n_vars, n_out, n_time_features, seq_len, label_len, pred_len)
        self.network = network(self.shape)
        self.revin = RevIN(n_vars) if revin else None
        self.lr, self.lr_decay, self.weight_decay = lr, lr_decay, weight_decay
        self.register_buffer("scale_mean", torch.zeros(n_vars))  # the training scaler (set in setup)
        self.register_buffer("scale_std", torch.ones(n_vars))
        self.metrics = nn.ModuleDict({f"{stage}_metrics": ForecastMetrics() for stage in ("train", "val", "test")})

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "scaler"):
            if dm.n_vars != self.shape.n_vars or dm.n_out != self.shape.n_out:
                raise ValueError(f"data has n_vars={dm.n_vars}, n_out={dm.n_out} but the model was built for "
                                 f"{self.shape.n_vars}, {self.shape.n_out}")
            self.scale_mean.copy_(torch.as_tensor(dm.scaler.mean, dtype=torch.float32))
            self.scale_std.copy_(torch.as_tensor(dm.scaler.std, dtype=torch.float32))

    def forward(self, x: Tensor, x_mark: Tensor, y_mark: Tensor) -> Tensor:
        """Scaled history ``[B, seq_len, n_vars]`` -> scaled forecast ``[B, pred_len, n_out]``."""
        s = self.shape
        if x.dim() != 3 or x.shape[1:] != (s.seq_len, s.n_vars):
            raise ValueError(f"x must be [batch, seq_len={s.seq_len}, n_vars={s.n_vars}], got {tuple(x.shape)}")
        if y_mark.shape[1] != s.label_len + s.pred_len or y_mark.shape[-1] != s.n_time_features:
            raise ValueError(f"y_mark must be [batch, label_len + pred_len={s.label_len + s.pred_len}, "
                             f"{s.n_time_features}], got {tuple(y_mark.shape)}")
        if self.revin is None:
            return self.network(x, x_mark, y_mark)
        x, stats = self.revin.normalize(x)
        return self.revin.denormalize(self.network(x, x_mark, y_mark), stats)

    def to_original_units(self, y: Tensor) -> Tensor:
        n = y.shape[-1]
        return y * self.scale_std[-n:] + self.scale_mean[-n:]

    def shared_step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        pred = self(batch["x"], batch["x_mark"], batch["y_mark"])
        loss = F.mse_loss(pred, batch["y"])
        metrics = self.metrics[f"{stage}_metrics"]
        metrics.update(pred, batch["y"], self.to_original_units(pred), self.to_original_units(batch["y"]))
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", batch_size=len(pred))
        return loss

    def _log_epoch(self, stage: str) -> None:
        values = self.metrics[f"{stage}_metrics"].compute()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val")
        self.metrics[f"{stage}_metrics"].reset()

    def on_train_epoch_end(self):
        self._log_epoch("train")

    def on_validation_epoch_end(self):
        self._log_epoch("val")

    def on_test_epoch_end(self):
        self._log_epoch("test")

    def predict_step(self, batch, batch_idx):
        return self.to_original_units(self(batch["x"], batch["x_mark"], batch["y_mark"]))

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:  # LastValue, TrainingMean: nothing to train
            return None
        optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.lr_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
