"""The summarization app as the CLI sees it: ``seqmix summarization fit --config configs/summarization/highlighter.yaml``
trains; ``seqmix summarization predict`` (:mod:`seqmix.apps.summarization.commands`) summarizes a paper or a text.
The module and datamodule are named by path, imported only for fit / validate / test: ``predict`` starts
without Lightning."""

from seqmix.apps.spec import AppSpec
from seqmix.apps.summarization.commands import predict_command

APP = AppSpec(
    name="summarization",
    description="Read-Highlight-Summarize on ACLSum: hierarchical encoder, highlighter (top-k or pointer network), "
                "ROUGE beside the single-sentence heuristics",
    model_class="seqmix.apps.summarization.module.SummarizationModule",
    datamodule_class="seqmix.apps.summarization.datamodule.SummarizationDataModule",
    links=(("data.vocab_words", "model.vocab_words"), ("data.limits", "model.limits")),
    commands={"predict": predict_command},
)
