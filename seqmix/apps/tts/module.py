"""The TTS app's LightningModule: trains any :class:`~seqmix.apps.tts.network.TTSNetwork` with one loss.

The network is injected as a factory ``symbols -> TTSNetwork`` (LightningCLI's ``class_path``); the phoneme
vocabulary is linked from the datamodule (``data.symbols``) and saved in the checkpoint's hyper-parameters,
so ``seqmix tts predict`` encodes a text as training did::

    model:
      network:
        class_path: seqmix.apps.tts.transformer_tts.TransformerTTS
        init_args: {d_model: 128, frames_per_step: 3}

Loss (:func:`tts_loss`; Transformer TTS Section 3.6 and Tacotron 2 Section 2.3), over the real frames and
decoder steps only (padding masked):

    mel    = |mel_before - target| + |mel_after - target|       (mean over frames and bands; ``mel_loss="l2"``:
                                                                 squared errors)
    stop   = BCE(stop_logits, stop targets, pos_weight)         one positive (the last step) per sentence, so it
                                                                 is weighted (the paper: 5 to 8)
    guided = mean A[s, l] * (1 - exp(-(l / L - s / S)^2 / (2 g^2)))   optional (Tachibana et al. 2018), on the
                                                                 alignment, when the network gives one
    loss   = mel + stop_loss_weight * stop + guided_attention_weight * guided

Logged per stage: ``{stage}/loss``, ``/mel``, ``/stop``, ``/guided``, ``/mel_l1`` (teacher-forced mel L1 after
the post-net, in log-mel units), ``/stop_acc`` (per valid step, threshold 0.5) and, with an alignment,
``/diagonality`` (:func:`diagonality`). Validation and test also run the network free (``infer``) on their first
``free_running_batches`` batches: ``/free_mel_l1`` (frame by frame over the shorter of the two lengths) and
``/duration_ratio`` (generated frames / target frames).
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmix.apps.module import StagedModule, TimeBudgetSchedule, lr_multiplier, weight_decay_groups
from seqmix.apps.tts.data import TTSBatch
from seqmix.apps.tts.network import TTSNetwork, TTSOutput, lengths_mask
from seqmix.core.mixer import check_int

NetworkFactory = Callable[[list[str]], TTSNetwork]


def step_targets(mel_lengths: Tensor, steps: int, frames_per_step: int) -> tuple[Tensor, Tensor]:
    """``(stop targets [B, S] float, valid steps [B, S] bool)``: step ``s`` holds frames ``s*r .. s*r + r - 1``;
    the valid steps are those holding a real frame, and the last of them is the stop target."""
    n_steps = (mel_lengths + frames_per_step - 1) // frames_per_step  # [B]
    index = torch.arange(steps, device=mel_lengths.device)[None]  # [1, S]
    return (index == n_steps[:, None] - 1).float(), index < n_steps[:, None]


def guided_attention_weights(phoneme_lengths: Tensor, n_steps: Tensor, steps: int, phonemes: int,
                             sigma: float) -> Tensor:
    """``W [B, S, L] = 1 - exp(-(l / L_b - s / S_b)^2 / (2 sigma^2))``, zero outside each sentence's ``S_b x L_b``."""
    s = torch.arange(steps, device=n_steps.device)[None, :, None] / n_steps.clamp(min=1)[:, None, None].float()
    l = torch.arange(phonemes, device=n_steps.device)[None, None, :] / phoneme_lengths.clamp(min=1)[:, None, None].float()
    weights = 1.0 - torch.exp(-((l - s) ** 2) / (2 * sigma ** 2))  # [B, S, L]
    inside = lengths_mask(n_steps, steps)[:, :, None] & lengths_mask(phoneme_lengths, phonemes)[:, None, :]
    return weights * inside


def diagonality(alignment: Tensor, phoneme_lengths: Tensor, n_steps: Tensor, band: float = 0.1) -> Tensor:
    """Mean attention mass within ``band`` of the diagonal ``l / L = s / S`` over the valid steps (1 = a
    perfectly diagonal alignment, about ``2 * band`` for a uniform one). ``alignment [B, S, L]`` -> scalar."""
    _, steps, phonemes = alignment.shape
    s = torch.arange(steps, device=alignment.device)[None, :, None] / n_steps.clamp(min=1)[:, None, None].float()
    l = torch.arange(phonemes, device=alignment.device)[None, None, :] / phoneme_lengths.clamp(min=1)[:, None, None].float()
    near = ((l - s).abs() <= band).float()  # [B, S, L]
    valid = lengths_mask(n_steps, steps)  # [B, S]
    mass = (alignment * near).sum(-1)  # [B, S]
    return (mass * valid).sum() / valid.sum().clamp(min=1)


def tts_loss(output: TTSOutput, batch: TTSBatch, frames_per_step: int, *, mel_loss: Literal["l1", "l2"] = "l1",
             stop_pos_weight: float = 5.0, stop_loss_weight: float = 1.0, guided_attention_weight: float = 0.0,
             guided_attention_sigma: float = 0.2) -> dict[str, Tensor]:
    """The named loss parts (module docstring): ``loss, mel, stop, guided, mel_l1, stop_acc[, diagonality]``."""
    b, t = batch.mels.shape[:2]
    length = output.mel_before.shape[1]  # S * r >= T
    target = F.pad(batch.mels, (0, 0, 0, length - t))  # [B, S * r, 80]; the pad is masked out
    frames = lengths_mask(batch.mel_lengths, length)[..., None].to(target.dtype)  # [B, S * r, 1]
    denominator = frames.sum() * target.shape[-1]

    def distance(pred: Tensor) -> Tensor:
        error = pred - target
        error = error.abs() if mel_loss == "l1" else error.pow(2)
        return (error * frames).sum() / denominator

    mel = distance(output.mel_before) + distance(output.mel_after)
    mel_l1 = ((output.mel_after - target).abs() * frames).sum() / denominator
    steps = output.stop_logits.shape[1]
    stop_target, valid = step_targets(batch.mel_lengths, steps, frames_per_step)
    weight = torch.where(stop_target > 0, stop_pos_weight, 1.0) * valid
    stop = (F.binary_cross_entropy_with_logits(output.stop_logits, stop_target, reduction="none") * weight).sum() \
        / weight.sum()
    stop_acc = (((output.stop_logits > 0).float() == stop_target).float() * valid).sum() / valid.sum()
    parts = {"mel": mel, "stop": stop, "mel_l1": mel_l1.detach(), "stop_acc": stop_acc.detach()}
    guided = output.mel_before.new_zeros(())
    if output.alignment is not None:
        n_steps = valid.sum(1)
        if guided_attention_weight > 0:
            w = guided_attention_weights(batch.phoneme_lengths, n_steps, steps, output.alignment.shape[-1],
                                         guided_attention_sigma)
            guided = (output.alignment * w).sum() / (valid.sum() * 1.0)
        parts["diagonality"] = diagonality(output.alignment.detach(), batch.phoneme_lengths, n_steps)
    parts["guided"] = guided
    parts["loss"] = mel + stop_loss_weight * stop + guided_attention_weight * guided
    return parts


class TTSModule(TimeBudgetSchedule, StagedModule):
    """Trains ``network`` (module docstring).

    Args:
        network: the model, a factory of the phoneme vocabulary (``class_path`` of a TTSNetwork in the config).
        symbols: the phoneme vocabulary (linked from ``data.symbols``).
        mel_loss, stop_pos_weight, stop_loss_weight, guided_attention_weight, guided_attention_sigma: the loss.
        lr, weight_decay: AdamW's (no decay on biases, norms, the positional scales).
        warmup_steps, schedule: linear warm-up, then constant or a cosine decay to 10%.
        budget_minutes: the cosine spans this many minutes of training instead of the steps (pair it with
            ``trainer.max_time``); None: the steps.
        budget_clock: the clock ``budget_minutes`` counts: 'wall', or 'cpu' (this process's CPU time: a budget
            on a shared machine, where other jobs take the cores; the run's stop must count the same clock).
        free_running_batches: validation / test batches also synthesised free running (0: none).
    """

    def __init__(self, network: NetworkFactory, symbols: Any, mel_loss: Literal["l1", "l2"] = "l1",
                 stop_pos_weight: float = 5.0, stop_loss_weight: float = 1.0, guided_attention_weight: float = 0.0,
                 guided_attention_sigma: float = 0.2, lr: float = 1e-3, weight_decay: float = 1e-6,
                 warmup_steps: int = 100, schedule: Literal["constant", "cosine"] = "cosine",
                 budget_minutes: float | None = None, free_running_batches: int = 1,
                 budget_clock: Literal["wall", "cpu"] = "wall"):
        super().__init__()
        owner = "TTSModule"
        if mel_loss not in ("l1", "l2"):
            raise ValueError(f"{owner}: mel_loss={mel_loss!r} is unknown; choose 'l1' or 'l2'")
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"{owner}: schedule={schedule!r} is unknown; choose 'constant' or 'cosine'")
        if lr <= 0 or weight_decay < 0 or stop_pos_weight <= 0 or stop_loss_weight < 0 or guided_attention_weight < 0:
            raise ValueError(f"{owner}: need lr > 0, weight_decay >= 0, stop_pos_weight > 0, stop_loss_weight >= 0 "
                             f"and guided_attention_weight >= 0; got lr={lr}, weight_decay={weight_decay}, "
                             f"stop_pos_weight={stop_pos_weight}, stop_loss_weight={stop_loss_weight}, "
                             f"guided_attention_weight={guided_attention_weight}")
        if not guided_attention_sigma > 0:
            raise ValueError(f"{owner}: guided_attention_sigma must be > 0, got {guided_attention_sigma}")
        check_int(owner, "warmup_steps", warmup_steps, minimum=0)
        check_int(owner, "free_running_batches", free_running_batches, minimum=0)
        if budget_minutes is not None and not budget_minutes > 0:
            raise ValueError(f"{owner}: budget_minutes must be > 0 or None, got {budget_minutes}")
        if budget_clock not in ("wall", "cpu"):
            raise ValueError(f"{owner}: budget_clock must be 'wall' or 'cpu' (this process's CPU time), got "
                             f"{budget_clock!r}")
        if not isinstance(symbols, (list, tuple)) or not all(isinstance(s, str) for s in symbols):
            raise ValueError(f"{owner}: symbols must be the phoneme vocabulary (linked from data.symbols), got "
                             f"{type(symbols).__name__}")
        self.save_hyperparameters()
        self.symbols = list(symbols)
        self.network = network(self.symbols)
        if not isinstance(self.network, TTSNetwork):
            raise ValueError(f"{owner}: network must build a TTSNetwork (TransformerTTS, Tacotron2), got "
                             f"{type(self.network).__name__}")
        if guided_attention_weight > 0 and not self.network.has_alignment:
            raise ValueError(f"{owner}: guided_attention_weight={guided_attention_weight} needs an alignment, and "
                             f"this {type(self.network).__name__} gives none (a softmax cross mixer does); set it to 0")

    def budget_clock(self) -> float:
        """``budget_clock="cpu"``: the cosine follows this process's CPU time, else wall time."""
        return time.process_time() if self.hparams.get("budget_clock", "wall") == "cpu" else time.perf_counter()

    def loss_parts(self, batch: TTSBatch) -> dict[str, Tensor]:
        h = self.hparams
        output = self.network(batch.phonemes, batch.phoneme_lengths, batch.mels)
        return tts_loss(output, batch, self.network.frames_per_step, mel_loss=h.mel_loss,
                        stop_pos_weight=h.stop_pos_weight, stop_loss_weight=h.stop_loss_weight,
                        guided_attention_weight=h.guided_attention_weight,
                        guided_attention_sigma=h.guided_attention_sigma)

    def shared_step(self, batch: TTSBatch, stage: str, batch_idx: int = 0) -> Tensor:
        parts = self.loss_parts(batch)
        if stage != "train" and batch_idx < self.hparams.free_running_batches:
            parts.update(self.free_running(batch))
        on_step, n = stage == "train", len(batch.ids)
        for name, value in parts.items():
            self.log(f"{stage}/{name}", value, on_step=on_step, on_epoch=not on_step, prog_bar=name in ("loss", "mel_l1"),
                     batch_size=n)
        return parts["loss"]

    def training_step(self, batch: TTSBatch, batch_idx: int) -> Tensor:
        return self.shared_step(batch, "train", batch_idx)

    def validation_step(self, batch: TTSBatch, batch_idx: int) -> None:
        self.shared_step(batch, "val", batch_idx)

    def test_step(self, batch: TTSBatch, batch_idx: int) -> None:
        self.shared_step(batch, "test", batch_idx)

    @torch.no_grad()
    def free_running(self, batch: TTSBatch) -> dict[str, Tensor]:
        """``free_mel_l1`` and ``duration_ratio`` of the network's own synthesis of ``batch``."""
        synthesis = self.network.infer(batch.phonemes, batch.phoneme_lengths,
                                       max_frames=min(self.network.max_frames, 2 * int(batch.mel_lengths.max()) + 30))
        errors, ratios = [], []
        for b in range(len(batch.ids)):
            n = min(int(synthesis.lengths[b]), int(batch.mel_lengths[b]))
            errors.append((synthesis.mels[b, :n] - batch.mels[b, :n]).abs().mean())
            ratios.append(synthesis.lengths[b].float() / batch.mel_lengths[b].float())
        return {"free_mel_l1": torch.stack(errors).mean(), "duration_ratio": torch.stack(ratios).mean()}

    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.AdamW(weight_decay_groups(self, h.weight_decay), lr=h.lr, betas=(0.9, 0.98))
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1

        def multiplier(step: int) -> float:
            return lr_multiplier(step, warmup_steps=h.warmup_steps, schedule=h.schedule, final_ratio=0.1,
                                 progress=self.schedule_progress(step, h.warmup_steps, total))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, multiplier)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
