"""The lm app as the CLI sees it: ``seqmix lm fit --config configs/lm/shakespeare_char.yaml``;
``seqmix lm generate --ckpt <ckpt> --prompt "..."`` continues a prompt (:mod:`.commands`);
``seqmix lm probe verbatim|reversal|jrt --ckpt <ckpt>`` runs a probe (:mod:`.probes`)."""

from seqmix.apps.lm.commands import generate_command
from seqmix.apps.lm.data import LMDataModule
from seqmix.apps.lm.module import LanguageModel
from seqmix.apps.lm.probes import probe_command
from seqmix.apps.spec import AppSpec

APP = AppSpec(
    name="lm",
    description="Language modelling (Shakespeare's plays, ACL papers): bits per byte, generation with any mixer",
    model_class=LanguageModel,
    datamodule_class=LMDataModule,
    links=(("data.tokenizer_json", "model.tokenizer_json"), ("data.context", "model.max_len")),
    commands={"generate": generate_command, "probe": probe_command},
)
