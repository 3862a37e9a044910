"""The summarization app as the CLI sees it: ``seqmix summarization fit --config configs/summarization/highlighter.yaml``
trains; ``seqmix summarization predict`` (:mod:`seqmix.apps.summarization.commands`) summarizes a paper or a text."""

from seqmix.apps.spec import AppSpec
from seqmix.apps.summarization.commands import predict_command
from seqmix.apps.summarization.datamodule import SummarizationDataModule
from seqmix.apps.summarization.module import SummarizationModule

APP = AppSpec(
    name="summarization",
    description="Read-Highlight-Summarize on ACLSum: hierarchical encoder, highlighter (top-k or pointer network), "
                "ROUGE beside the single-sentence heuristics",
    model_class=SummarizationModule,
    datamodule_class=SummarizationDataModule,
    links=(("data.vocab_words", "model.vocab_words"), ("data.limits", "model.limits")),
    commands={"predict": predict_command},
)
