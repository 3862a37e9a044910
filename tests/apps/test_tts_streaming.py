"""Streaming speech (issue 32, :mod:`seqmix.apps.tts.streaming`): the streamed post-net mel equals the whole
utterance's, HiFi-GAN in chunks equals HiFi-GAN on the whole mel, chunked Griffin-Lim stays within a stated
spectral-convergence margin of whole-utterance Griffin-Lim, a recurrent decoder streams in bounded memory, and
``seqmix tts predict --stream`` writes a WAV progressively and leaves no ``.partial`` behind.

Tiny: networks of width 16-32, random HiFi-GAN generators of 16 channels, one espeak-ng sentence (about 2 s),
the shipped checkpoint for 0.3-0.4 s of audio."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from seqmix.apps.tts import streaming
from seqmix.apps.tts.audio import HOP, PartialWav, griffin_lim, mel_spectrogram, read_wav, spectral_convergence
from seqmix.apps.tts.corpus import Sentence, synthesize
from seqmix.apps.tts.network import Postnet
from seqmix.apps.tts.streaming import (GRIFFIN_LIM_CONTEXT, GRIFFIN_LIM_SC_MARGIN, ContextChunker, GriffinLimChunks,
                                       SpeechStreamer, conv_half_width, hifigan_context, postnet_context,
                                       stream_speech)
from seqmix.apps.tts.tacotron import Tacotron2
from seqmix.apps.tts.transformer_tts import TransformerTTS
from seqmix.apps.tts.vocoder import HiFiGANGenerator
from seqmix.cli import main
from seqmix.core.blocks import mixer_factory

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SYMBOLS = ["<pad>", "<unk>", "<eos>", *"abcdefgh "]
IDS = [3, 7, 4, 10, 5, 2]  # one sentence, <eos> last
SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints/tts/transformer_tts.ckpt"


def transformer(mixer: str = "softmax", **overrides) -> TransformerTTS:
    """A tiny Transformer TTS; the pre-net's inference dropout stays on (seeded runs must agree with it)."""
    args = dict(d_model=32, n_encoder_layers=1, n_decoder_layers=2, conv_channels=16, prenet_hidden=16,
                postnet_channels=16, dropout=0.1, encoder_prenet_dropout=0.0, frames_per_step=2, max_phonemes=16,
                max_frames=60, encoder_mixer=mixer_factory(mixer, n_heads=2, causal=False),
                decoder_mixer=mixer_factory(mixer, n_heads=2, causal=True))
    return TransformerTTS(SYMBOLS, **{**args, **overrides}).eval()


def tacotron(**overrides) -> Tacotron2:
    args = dict(encoder_dim=16, prenet_hidden=16, attention_rnn_dim=16, decoder_rnn_dim=16, attention_dim=8,
                location_filters=4, location_kernel=5, postnet_channels=16, frames_per_step=3, max_phonemes=16,
                max_frames=60)
    return Tacotron2(SYMBOLS, **{**args, **overrides}).eval()


NETWORKS = {"transformer": transformer, "transformer_lstm": lambda: transformer("lstm"), "tacotron": tacotron}


def small_hifigan() -> HiFiGANGenerator:
    """V1's kernels, dilations and rates (so V1's receptive field) at 16 channels, randomly initialised."""
    torch.manual_seed(0)
    return HiFiGANGenerator(upsample_initial_channel=16).eval()


def pushed(chunker: ContextChunker, frames: torch.Tensor, step: int) -> torch.Tensor:
    """The chunker's output for ``frames [T, C]`` given ``step`` frames at a time, concatenated."""
    out = []
    for start in range(0, frames.shape[0], step):
        out += chunker.push(frames[start:start + step])
    return torch.cat(out + chunker.finish())


# ---------------------------------------------------------------- the post-net: exact
@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("chunk_frames", [1, 4, 7])
def test_streamed_postnet_mel_equals_the_whole_utterance(name, chunk_frames):
    net = NETWORKS[name]()
    torch.manual_seed(3)
    whole = net.infer(torch.tensor([IDS]), torch.tensor([len(IDS)]), max_frames=47, stop_threshold=1.1)
    torch.manual_seed(3)  # the pre-net's dropout draws in the same order: the same frames
    streamer = SpeechStreamer(net, chunk_frames=chunk_frames, max_frames=47, stop_threshold=1.1)
    chunks = list(streamer.mel_chunks(IDS))
    length = int(whole.lengths[0])  # 46 (r = 2) or 45 (r = 3) frames: not a multiple of 4 or 7
    assert streamer.frames == length and not streamer.stopped
    sizes = [c.shape[0] for c in chunks]  # the first covers Griffin-Lim's right context too
    assert sizes[:-1] == [chunk_frames + GRIFFIN_LIM_CONTEXT] + [chunk_frames] * (len(chunks) - 2) and sizes[-1] >= 1
    torch.testing.assert_close(torch.cat(chunks), whole.mels[0, :length], rtol=0, atol=1e-5)


def test_postnet_context_is_read_from_its_convolutions_and_is_needed(monkeypatch):
    assert postnet_context(Postnet(16, 5, 5)) == 10 and postnet_context(Postnet(16, 3, 7)) == 9
    with pytest.raises(ValueError, match="not a centred, length-preserving convolution"):
        conv_half_width(nn.Conv1d(4, 4, 5, padding=1))
    net = transformer()
    torch.manual_seed(3)
    whole = net.infer(torch.tensor([IDS]), torch.tensor([len(IDS)]), max_frames=40, stop_threshold=1.1).mels[0]
    monkeypatch.setattr(streaming, "postnet_context", lambda postnet: 9)  # one frame short of the 10 it needs
    torch.manual_seed(3)
    short = torch.cat(list(SpeechStreamer(net, chunk_frames=7, max_frames=40, stop_threshold=1.1).mel_chunks(IDS)))
    assert (short - whole).abs().max() > 1e-3


@pytest.mark.parametrize("vocoder", ["griffin-lim", "hifigan"])
def test_the_first_chunk_comes_as_soon_as_its_context_exists(vocoder):
    net = transformer(max_frames=120)
    generator = small_hifigan() if vocoder == "hifigan" else "griffin-lim"
    streamer = SpeechStreamer(net, chunk_frames=5, vocoder=generator, stop_threshold=1.1)
    lookahead = hifigan_context(generator) if vocoder == "hifigan" else GRIFFIN_LIM_CONTEXT
    made, sizes = [], []  # decoder frames made when each chunk came out; its samples
    for audio in streamer.stream(IDS):
        made.append(streamer.frames)
        sizes.append(audio.shape[0])
    assert sizes == [5 * HOP] * 24  # 120 frames
    needed = 5 + lookahead + postnet_context(net.postnet)  # 31 (HiFi-GAN) or 23 frames, whole steps of 2
    assert made[0] == needed + needed % 2
    assert all(b - a <= 6 for a, b in zip(made, made[1:]))  # then one chunk per 5 frames (whole steps of 2)


def test_the_stream_stops_with_the_stop_token():
    net = transformer()
    with torch.no_grad():
        net.stop_out.bias.fill_(10.0)  # stop at the first step
    streamer = SpeechStreamer(net, chunk_frames=3, vocoder=small_hifigan())
    audio = torch.cat(list(streamer.stream(IDS)))
    assert streamer.stopped and streamer.frames == 2 and audio.shape == (2 * HOP,)


# ---------------------------------------------------------------- HiFi-GAN: exact
def test_hifigan_in_chunks_equals_hifigan_on_the_whole_mel(monkeypatch):
    generator = small_hifigan()
    assert hifigan_context(generator) == 16  # V1's (the docs say so)
    net = transformer("lstm")
    torch.manual_seed(5)
    mel = net.infer(torch.tensor([IDS]), torch.tensor([len(IDS)]), max_frames=53, stop_threshold=1.1).mels[0]
    with torch.no_grad():
        whole = generator(mel.T[None])[0]  # [1, 80, 52] -> [52 * 256]
    torch.manual_seed(5)
    streamed = torch.cat(list(stream_speech(net, IDS, chunk_frames=5, vocoder=generator, max_frames=53,
                                            stop_threshold=1.1)))
    assert streamed.shape == whole.shape == (52 * HOP,)
    scale = float(whole.abs().max())
    assert float((streamed - whole).abs().max()) <= 1e-5 * scale
    monkeypatch.setattr(streaming, "hifigan_context", lambda generator: 3)  # too little context: it shows
    chunker = SpeechStreamer(net, chunk_frames=5, vocoder=generator).vocoder_chunker()
    with torch.no_grad():
        short = pushed(chunker, mel, 3)
    assert float((short - whole).abs().max()) > 1e-4 * scale


# ---------------------------------------------------------------- Griffin-Lim: approximate, bounded
@pytest.fixture(scope="module")
def spoken_mel(tmp_path_factory) -> torch.Tensor:
    """The log-mel ``[T, 80]`` of one espeak-ng sentence (about 2 s)."""
    root = tmp_path_factory.mktemp("tts_stream")
    entries, _ = synthesize([Sentence("test-0000", "test", "P", "abstract", "Speech comes out one chunk at a time.")],
                            root, workers=1, progress=False)
    wav, _ = read_wav(root / entries[0].wav)
    return mel_spectrogram(wav).T  # [80, T] -> [T, 80]


def test_chunked_griffin_lim_stays_near_whole_utterance_griffin_lim(spoken_mel):
    mel = spoken_mel
    whole = griffin_lim(mel.T)  # [T * 256]
    silence = torch.zeros_like(whole)
    assert spectral_convergence(silence, mel.T) == pytest.approx(1.0, abs=1e-3)  # nothing of the target
    with pytest.raises(ValueError, match="Griffin-Lim needs at least 4"):
        griffin_lim(mel[:3].T)
    with pytest.raises(ValueError, match="known must be"):
        griffin_lim(mel[:10].T, known=torch.zeros(10 * HOP + 1))
    chunks = GriffinLimChunks()
    streamed = pushed(ContextChunker(7, chunks.context, chunks.context, chunks), mel, 3)
    assert streamed.shape == whole.shape
    whole_sc, streamed_sc = spectral_convergence(whole, mel.T), spectral_convergence(streamed, mel.T)
    assert whole_sc < 0.2  # Griffin-Lim fits espeak-ng's magnitudes (about 0.08)
    assert streamed_sc <= whole_sc + GRIFFIN_LIM_SC_MARGIN, (streamed_sc, whole_sc)
    # the margin tells: 8-frame pieces vocoded independently, with no context, fall outside it
    n = mel.shape[0] - mel.shape[0] % 8
    independent = torch.cat([griffin_lim(piece.T) for piece in mel[:n].split(8)])
    assert spectral_convergence(independent, mel[:n].T) > whole_sc + GRIFFIN_LIM_SC_MARGIN


# ---------------------------------------------------------------- memory
def test_a_recurrent_decoder_streams_with_a_bounded_buffer():
    net = transformer("lstm", max_frames=1000)
    assert all(block.mixer.recurrent for block in net.decoder.blocks)  # constant-size decoder state
    with torch.no_grad():
        net.stop_out.weight.zero_()
        net.stop_out.bias.fill_(-10.0)  # the stop token never fires: 500 steps, 1,000 frames
    generator, chunk = small_hifigan(), 5
    streamer = SpeechStreamer(net, chunk_frames=chunk, vocoder=generator)
    held, samples = [], 0
    for audio in streamer.stream(IDS):
        held.append(streamer.buffered_frames)
        samples += audio.shape[0]
    assert samples == 1000 * HOP and streamer.frames == 1000 and not streamer.stopped
    # each window holds at most left + its longest chunk + right + one push (r frames for the post-net, a post-net
    # chunk for the vocoder); the post-net's first chunk is the vocoder's right context longer
    half, context = postnet_context(net.postnet), hifigan_context(generator)
    bound = (2 * half + chunk + context + 2) + (2 * context + chunk + chunk + context)
    assert max(held) <= bound < 1000
    assert max(held[: len(held) // 2]) == max(held[len(held) // 2:])  # steady, not growing


# ---------------------------------------------------------------- the WAV and the CLI
def test_partial_wav_is_valid_after_each_chunk_and_renamed_at_the_end(tmp_path):
    out = tmp_path / "speech.wav"
    with PartialWav(out) as wav:
        wav.write(torch.full((256,), 0.5))
        assert read_wav(wav.partial)[0].shape == (256,)  # a readable WAV already
        wav.write(torch.full((512,), -0.25))
        got, rate = read_wav(tmp_path / "speech.wav.partial")
        assert rate == 22050 and got.shape == (768,) and abs(float(got[-1]) + 0.25) < 1e-4
        assert not out.exists()
    assert read_wav(out)[0].shape == (768,) and not (tmp_path / "speech.wav.partial").exists()
    with pytest.raises(RuntimeError, match="interrupted"):
        with PartialWav(tmp_path / "broken.wav") as wav:
            wav.write(torch.zeros(256))
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speech.wav"]  # no broken.wav, no .partial


def test_predict_stream_writes_the_wav_and_leaves_no_partial(tmp_path, capsys):
    streamed, whole = tmp_path / "streamed.wav", tmp_path / "whole.wav"
    base = ["tts", "predict", "--ckpt", str(SHIPPED), "--text", "We test it.", "--max-seconds", "0.3"]
    assert main([*base, "--out", str(streamed), "--stream", "--chunk-frames", "5", "--vocoder", "hifigan"]) == 0
    printed = capsys.readouterr().out
    assert "first audio chunk after" in printed and "real-time factor" in printed and "streamed" in printed
    assert main([*base, "--out", str(whole), "--vocoder", "hifigan"]) == 0  # the same seed: the same frames
    (a, rate), (b, _) = read_wav(streamed), read_wav(whole)
    assert rate == 22050 and a.shape == b.shape and 0 < len(a) <= 0.3 * 22050 and len(a) % HOP == 0
    assert float((a - b).abs().max()) <= 2 / 32768  # HiFi-GAN is exact in chunks, to 16-bit rounding
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.wav", "whole.wav"]


def test_stream_speech_speaks_text_with_a_trained_module():
    from seqmix.apps.tts.commands import load_model

    model = load_model(SHIPPED)
    torch.manual_seed(0)  # the pre-net's inference dropout
    chunks = list(stream_speech(model, "We test it.", chunk_frames=9, max_frames=24))
    assert [c.shape[0] for c in chunks] == [9 * HOP, 9 * HOP, 6 * HOP]  # 24 frames (8 steps of 3), no stop
    assert float(torch.cat(chunks).abs().max()) > 0.01  # sound, not silence


def one_line_error(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as err:
        main(argv)
    first, rest = str(err.value.code).split("\n", 1)
    assert rest.startswith("(SEQMIX_TRACEBACK=1") and first.startswith("seqmix tts predict: error: ")
    return first


def test_bad_streaming_arguments_are_one_line_errors(tmp_path):
    base = ["tts", "predict", "--ckpt", str(SHIPPED), "--text", "We test it.", "--out", str(tmp_path / "x.wav")]
    for bad in ("0", "-3"):
        message = one_line_error([*base, "--stream", "--chunk-frames", bad])
        assert "--chunk-frames must be >= 1" in message and f"got {bad}; e.g. --chunk-frames 32" in message
    assert "add --stream or drop --chunk-frames" in one_line_error([*base, "--chunk-frames", "8"])
    assert "drop --plot or --stream" in one_line_error([*base, "--stream", "--plot", str(tmp_path / "m.png")])
    assert not list(tmp_path.iterdir())
    net = transformer()
    with pytest.raises(ValueError, match="chunk_frames must be an int >= 1"):
        stream_speech(net, IDS, chunk_frames=0)
    with pytest.raises(ValueError, match="max_frames must be an int >= 1"):
        stream_speech(net, IDS, max_frames=0)
    with pytest.raises(ValueError, match="unknown vocoder 'wavenet'"):
        stream_speech(net, IDS, vocoder="wavenet")
    with pytest.raises(ValueError, match=r"one sentence's phoneme ids \[L\] \(batch 1\)"):
        stream_speech(net, [IDS, IDS])
    with pytest.raises(ValueError, match="needs the network in eval mode"):
        stream_speech(net.train(), IDS)
    with pytest.raises(ValueError, match="needs a TTSNetwork or a TTSModule"):
        stream_speech(nn.Linear(2, 2), IDS)
