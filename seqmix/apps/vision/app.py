"""The vision app for ``seqmix vision fit|validate|test|predict`` (predict, --explain: :mod:`.commands`)."""

from seqmix.apps.spec import AppSpec
from seqmix.apps.vision.commands import predict_command
from seqmix.apps.vision.data import ImageDataModule
from seqmix.apps.vision.model import ImageClassifier

APP = AppSpec(
    name="vision",
    description="BiFormer (bi-level routing attention), MambaOut (gated CNN) and a ViT with any non-causal mixer, "
                "on Fashion-MNIST (or scikit-learn's digits)",
    model_class=ImageClassifier,
    datamodule_class=ImageDataModule,
    links=(("data.in_chans", "model.in_chans"), ("data.n_classes", "model.n_classes"),
           ("data.img_size", "model.img_size")),
    commands={"predict": predict_command},
)
