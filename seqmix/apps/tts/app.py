"""The TTS app as the CLI sees it (issue 32): ``seqmix tts prepare`` writes the espeak-ng corpus
(:mod:`seqmix.apps.tts.corpus`); ``seqmix tts fit --config configs/tts/transformer_tts.yaml`` (or
``tacotron.yaml``) trains; ``seqmix tts predict --ckpt ... --text ... --out speech.wav``
(:mod:`seqmix.apps.tts.commands`) speaks a sentence."""

from seqmix.apps.spec import AppSpec
from seqmix.apps.tts.commands import predict_command
from seqmix.apps.tts.corpus import prepare_command
from seqmix.apps.tts.data import TTSDataModule
from seqmix.apps.tts.module import TTSModule

APP = AppSpec(
    name="tts",
    description="Text to speech on an espeak-ng corpus of ACL sentences: Transformer TTS and a Tacotron-2-style "
                "baseline, Griffin-Lim and HiFi-GAN vocoders, MCD-DTW (issue 32)",
    model_class=TTSModule,
    datamodule_class=TTSDataModule,
    links=(("data.symbols", "model.symbols"),),
    commands={"prepare": prepare_command, "predict": predict_command},
)
