"""The recall app as the CLI sees it: ``seqmix recall fit --config configs/recall/softmax.yaml``;
``seqmix recall generate --ckpt <ckpt>`` answers queries by decoding (:mod:`.commands`)."""

from seqmix.apps.recall.commands import generate_command
from seqmix.apps.recall.data import MQARDataModule
from seqmix.apps.recall.model import RecallLM
from seqmix.apps.spec import AppSpec

APP = AppSpec(
    name="recall",
    description="Multi-query associative recall (Zoology, Arora et al. 2023): accuracy on queried keys",
    model_class=RecallLM,
    datamodule_class=MQARDataModule,
    links=(("data.vocab_size", "model.vocab_size"), ("data.seq_len", "model.max_len")),
    commands={"generate": generate_command},
)
