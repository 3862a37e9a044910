"""``seqmix tts prepare`` (:mod:`seqmix.apps.tts.corpus`): the espeak-ng corpus, written once and reused.

The TTS models (Transformer TTS, the Tacotron-style baseline) and their ``fit|validate|test|predict`` come
with the rest of issue 32; until then ``seqmix tts fit`` (and validate, test, predict) is refused with one line and
``prepare`` is the app's one command."""

from seqmix.apps.spec import AppSpec
from seqmix.apps.tts.corpus import prepare_command
from seqmix.apps.tts.data import TTSDataModule

APP = AppSpec(
    name="tts",
    description="Text to speech on an espeak-ng corpus of ACL sentences (issue 32)",
    model_class=None,  # the TTS models come with the rest of issue 32: the Lightning commands are refused
    datamodule_class=TTSDataModule,
    commands={"prepare": prepare_command},
)
