"""The summarization app's LightningModule: trains any :class:`SummarizationNetwork` and scores it the one way.

The network is injected as a factory ``vocab_words -> SummarizationNetwork``, which LightningCLI builds from
the config (the vocabulary itself is linked from the datamodule, so it is typed nowhere and saved once, in
the checkpoint's hyper-parameters)::

    model:
      network:
        class_path: seqmix.apps.summarization.highlighter.Highlighter
        init_args: {d_model: 96, selection: top_k, top_k: 1}

Training logs ``train/loss`` and every named part of the network's loss (``train/bce``, ``train/pointer``).
Validation and test run ``generate`` on every example, turn each :class:`Output` into a
:class:`~seqmix.apps.summarization.baselines.Prediction` (an extractive output: its selected sentences of the
paper; an abstractive one: its words) and score them all with
:func:`~seqmix.apps.summarization.baselines.evaluate` against the split's papers: ``{stage}/rouge1``,
``/rouge2``, ``/rougeL`` (mean F1 over examples), ``{stage}/extraction_f1`` for an extractive network, and
the same per aspect (``{stage}/rougeL_challenge``, ...). The last epoch's predictions stay in
:attr:`SummarizationModule.predictions` (what ``benchmarks/summarization.py`` writes). One process only:
the ROUGE of a data-parallel run would be each rank's share.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from seqmix.apps.module import StagedModule, lr_multiplier, step_progress, weight_decay_groups
from seqmix.apps.summarization.baselines import Prediction, evaluate
from seqmix.apps.summarization.batch import Batch
from seqmix.apps.summarization.data import ASPECTS, Paper
from seqmix.apps.summarization.metrics import ROUGE_KEYS, Rouge
from seqmix.apps.summarization.network import NetworkFactory, SummarizationNetwork, to_prediction


class SummarizationModule(StagedModule):
    """Trains ``network`` (module docstring).

    Args:
        network: the model, a factory of the vocabulary (``class_path`` of a SummarizationNetwork in the config).
        vocab_words: the training papers' vocabulary (linked from ``data.vocab_words``).
        limits: the datamodule's input limits (``max_sentences``, ``max_words``, ``max_summary_len``; linked from
            ``data.limits``), saved so ``predict`` cuts a paper as training did.
        lr, weight_decay: AdamW's (no decay on biases, norms and other vectors).
        warmup_steps, schedule: linear warm-up, then constant or a cosine decay to 10% over the training steps.
    """

    # vocab_words is typed Any, not list[str]: jsonargparse checks a list[str] item by item and deep-copies the
    # config at each item (quadratic: 8.5 s of CPU to load a 4.5k-word checkpoint); it comes only from the link
    def __init__(self, network: NetworkFactory, vocab_words: Any,
                 limits: dict[str, int] | None = None, lr: float = 1e-3, weight_decay: float = 0.01,
                 warmup_steps: int = 50, schedule: Literal["constant", "cosine"] = "cosine"):
        super().__init__()
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"SummarizationModule: schedule={schedule!r} is unknown; choose 'constant' or 'cosine'")
        if lr <= 0 or weight_decay < 0 or warmup_steps < 0:
            raise ValueError(f"SummarizationModule: need lr > 0, weight_decay >= 0, warmup_steps >= 0; got lr={lr}, "
                             f"weight_decay={weight_decay}, warmup_steps={warmup_steps}")
        if not isinstance(vocab_words, (list, tuple)) or not all(isinstance(w, str) for w in vocab_words):
            raise ValueError("SummarizationModule: vocab_words must be a list of words (linked from data.vocab_words), "
                             f"got {type(vocab_words).__name__}")
        self.save_hyperparameters()  # the network's config too (LightningCLI's form): checkpoints rebuild it
        self.vocab_words = list(vocab_words)
        self.network = network(self.vocab_words)
        if not isinstance(self.network, SummarizationNetwork):
            raise ValueError(f"SummarizationModule: network must build a SummarizationNetwork (Highlighter, ...), got "
                             f"{type(self.network).__name__}")
        self.limits = dict(limits or {})
        self.outputs: dict[str, list[Prediction]] = {}
        self.predictions: dict[str, list[Prediction]] = {}
        self._rouge: Rouge | None = None

    @property
    def rouge(self) -> Rouge:
        if self._rouge is None:
            self._rouge = Rouge()
        return self._rouge

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch.to(device) if isinstance(batch, Batch) else super().transfer_batch_to_device(batch, device,
                                                                                                  dataloader_idx)

    def shared_step(self, batch: Batch, stage: str) -> Tensor:
        parts = self.network.loss(batch)
        n = len(batch.paper_ids)
        for name, value in parts.items():
            on_step = stage == "train"
            self.log(f"{stage}/{name}", value, on_step=on_step, on_epoch=not on_step, prog_bar=name == "loss",
                     batch_size=n)
        if stage != "train":
            self.outputs.setdefault(stage, []).extend(self.predict_batch(batch, stage))
        return parts["loss"]

    def papers(self, stage: str) -> dict[str, Paper]:
        """The papers of the split being evaluated, by id (from the trainer's datamodule)."""
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "papers"):
            raise ValueError("SummarizationModule scores against the datamodule's papers: run it with a "
                             "SummarizationDataModule (trainer.validate(model, datamodule=...))")
        return {paper.id: paper for paper in datamodule.papers[stage]}

    def predict_batch(self, batch: Batch, stage: str) -> list[Prediction]:
        was_training = self.network.training
        self.network.eval()
        with torch.no_grad():
            outputs = self.network.generate(batch)
        self.network.train(was_training)
        papers = self.papers(stage)
        return [to_prediction(out, papers[pid], ASPECTS[int(a)])
                for out, pid, a in zip(outputs, batch.paper_ids, batch.aspect)]

    def log_scores(self, stage: str) -> None:
        predictions = self.outputs.pop(stage, [])
        if not predictions:
            return
        self.predictions[stage] = predictions
        result = evaluate(predictions, list(self.papers(stage).values()), self.rouge)
        for group, scores in result.rouge.items():
            suffix = "" if group == "all" else f"_{group}"
            for key in ROUGE_KEYS:
                self.log(f"{stage}/{key}{suffix}", scores[key], prog_bar=key == "rougeL" and group == "all")
        if result.extraction is not None:
            for group, score in result.extraction.items():
                suffix = "" if group == "all" else f"_{group}"
                self.log(f"{stage}/extraction_f1{suffix}", score.f1)

    def on_validation_epoch_end(self) -> None:
        self.log_scores("val")

    def on_test_epoch_end(self) -> None:
        self.log_scores("test")

    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.AdamW(weight_decay_groups(self, h.weight_decay), lr=h.lr)
        total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_multiplier(step, warmup_steps=h.warmup_steps, schedule=h.schedule, final_ratio=0.1,
                                         progress=step_progress(step, h.warmup_steps, total)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
