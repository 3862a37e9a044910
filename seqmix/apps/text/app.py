"""The text app as the CLI sees it: ``seqmix text fit --config configs/text/redaffectivelm.yaml`` trains;
``seqmix text predict`` (:mod:`seqmix.apps.text.commands`) scores headlines with a trained checkpoint."""

from seqmix.apps.spec import AppSpec
from seqmix.apps.text.commands import predict_command
from seqmix.apps.text.data import EmotionDataModule
from seqmix.apps.text.model import EmotionRegressor

APP = AppSpec(
    name="text",
    description="Readers'-emotion detection (REDAffectiveLM) on SemEval-2007 Affective Text",
    model_class=EmotionRegressor,
    datamodule_class=EmotionDataModule,
    links=(("data.n_emotions", "model.n_emotions"), ("data.word_dim", "model.word_dim"),
           ("data.context_dim", "model.context_dim"),
           ("data.context_trainable_layers", "model.context_trainable_layers")),
    commands={"predict": predict_command},
)
