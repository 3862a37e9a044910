"""The shipped TTS checkpoints (issue 32; written by ``python -m benchmarks.tts --ship transformer_tts`` and
``python -m benchmarks.tts_recognizer --train``): slim, named, and working on one short sentence each."""

from __future__ import annotations

from pathlib import Path

import torch

from seqmix.apps.tts.audio import mel_spectrogram, read_wav
from seqmix.apps.tts.corpus import Sentence, synthesize
from seqmix.apps.tts.recognizer import load_recognizer, phoneme_error_rate, recognition_symbols
from seqmix.cli import main

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "checkpoints/tts/transformer_tts.ckpt"
RECOGNIZER = REPO / "checkpoints/tts/recognizer.pt"


def test_shipped_tts_checkpoint_is_slim_and_names_its_app():
    assert SHIPPED.stat().st_size <= 40_000_000
    checkpoint = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    assert checkpoint["seqmix_app"] == "tts"
    assert not {"optimizer_states", "lr_schedulers", "loops", "callbacks"} & set(checkpoint)


def test_shipped_tts_checkpoint_predicts_a_short_sentence(tmp_path, capsys):
    out = tmp_path / "speech.wav"
    assert main(["tts", "predict", "--ckpt", str(SHIPPED), "--text", "We test it.", "--out", str(out),
                 "--max-seconds", "0.4"]) == 0
    assert "phonemes: wiː tˈɛst ɪt" in capsys.readouterr().out
    wav, rate = read_wav(out)
    assert rate == 22050 and 0 < len(wav) <= 0.4 * 22050 + 256
    assert float(wav.abs().max()) > 0.01  # speech, not silence


def test_shipped_recogniser_transcribes_espeak_audio(tmp_path):
    entries, _ = synthesize([Sentence("test-0000", "test", "P", "abstract", "The model reads a short sentence.")],
                            tmp_path, workers=1, progress=False)
    wav, _ = read_wav(tmp_path / entries[0].wav)
    mel = mel_spectrogram(wav).T[None]  # [80, T] -> [1, T, 80]
    model = load_recognizer(RECOGNIZER)
    hypothesis = model.transcribe(mel, torch.tensor([mel.shape[1]]))[0]
    reference = recognition_symbols(entries[0].phonemes)
    assert phoneme_error_rate([reference], [hypothesis]) < 0.3, ("".join(reference), "".join(hypothesis))
