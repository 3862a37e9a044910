"""The TTS models (issue 32): Transformer TTS and the Tacotron-2-style baseline, their loss, fit and predict.

Tiny: width 16-32, phoneme inputs of at most 9 ids, at most 40 mel frames; the CLI tests speak four short
sentences with espeak-ng into tmp_path and fit 2 steps."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from seqmix.apps.tts.audio import LOG_SILENCE, N_MELS, read_wav
from seqmix.apps.tts.corpus import Sentence, synthesize
from seqmix.apps.tts.data import TTSBatch
from seqmix.apps.tts.module import diagonality, guided_attention_weights, step_targets, tts_loss
from seqmix.apps.tts.network import TTSOutput
from seqmix.apps.tts.tacotron import Tacotron2
from seqmix.apps.tts.transformer_tts import TransformerTTS
from seqmix.cli import main
from seqmix.core.blocks import mixer_factory

SYMBOLS = ["<pad>", "<unk>", "<eos>", *"abcdefgh "]
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "tts"


def transformer(**overrides) -> TransformerTTS:
    args = dict(d_model=32, n_encoder_layers=1, n_decoder_layers=2, conv_channels=16, prenet_hidden=16,
                postnet_channels=16, dropout=0.0, encoder_prenet_dropout=0.0, prenet_always_dropout=False,
                frames_per_step=2, max_phonemes=16, max_frames=60)
    return TransformerTTS(SYMBOLS, **{**args, **overrides})


def tacotron(**overrides) -> Tacotron2:
    args = dict(encoder_dim=16, prenet_hidden=16, attention_rnn_dim=16, decoder_rnn_dim=16, attention_dim=8,
                location_filters=4, location_kernel=5, postnet_channels=16, encoder_dropout=0.0, rnn_dropout=0.0,
                postnet_dropout=0.0, prenet_always_dropout=False, frames_per_step=2, max_phonemes=16, max_frames=60)
    return Tacotron2(SYMBOLS, **{**args, **overrides})


NETWORKS = {"transformer": transformer, "tacotron": tacotron,
            "transformer_gla": lambda **kw: transformer(
                encoder_mixer=mixer_factory("gla", n_heads=2, causal=False),
                decoder_mixer=mixer_factory("gla", n_heads=2, causal=True), **kw)}


def phoneme_batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    phonemes = torch.randint(3, len(SYMBOLS), (2, 9))
    lengths = torch.tensor([9, 6])
    phonemes[1, 6:] = 0
    phonemes[0, 8] = phonemes[1, 5] = 2  # <eos>
    return phonemes, lengths


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_shapes_and_loss(name):
    torch.manual_seed(0)
    net = NETWORKS[name]()
    phonemes, lengths = phoneme_batch()
    mels = torch.randn(2, 21, N_MELS) - 5.0
    out = net(phonemes, lengths, mels)
    assert out.mel_before.shape == out.mel_after.shape == (2, 22, N_MELS)  # 11 steps of r = 2
    assert out.stop_logits.shape == (2, 11)
    assert out.alignment.shape == (2, 11, 9)  # transformer_gla too: its cross mixer is softmax attention
    assert torch.allclose(out.alignment.sum(-1), torch.ones(2, 11), atol=1e-5)  # a distribution over phonemes
    assert out.alignment[1, :, 6:].abs().max() == 0  # never on padding
    batch = TTSBatch(["a", "b"], phonemes, lengths, mels, torch.tensor([21, 15]), torch.zeros(2, 21))
    parts = tts_loss(out, batch, net.frames_per_step, guided_attention_weight=1.0)
    assert set(parts) >= {"loss", "mel", "stop", "guided", "mel_l1", "stop_acc", "diagonality"}
    parts["loss"].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())
    assert net.embed.weight.grad.abs().sum() > 0 and net.postnet.convs[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_decoder_is_causal(name):
    net = NETWORKS[name]().eval()
    phonemes, lengths = phoneme_batch()
    mels = torch.randn(2, 20, N_MELS) - 5.0
    changed = mels.clone()
    changed[:, 9:] += 3.0  # frames 9.. feed steps 5.. (step s is fed the last frame of step s - 1: frame 2s - 1)
    a, b = net(phonemes, lengths, mels), net(phonemes, lengths, changed)
    assert torch.equal(a.mel_before[:, :10], b.mel_before[:, :10])  # steps 0..4 = frames 0..9
    assert torch.equal(a.stop_logits[:, :5], b.stop_logits[:, :5])
    assert not torch.allclose(a.mel_before[:, 10:], b.mel_before[:, 10:])


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_stepwise_inference_equals_teacher_forcing_on_its_own_frames(name):
    torch.manual_seed(1)
    net = NETWORKS[name]().eval()
    phonemes, lengths = phoneme_batch()
    synthesis = net.infer(phonemes, lengths, max_frames=24, stop_threshold=1.1)  # never stops: 12 steps
    assert synthesis.before.shape == (2, 24, N_MELS) and synthesis.lengths.tolist() == [24, 24]
    assert not synthesis.stopped.any()
    forced = net(phonemes, lengths, synthesis.before)  # its own frames as the teacher's
    assert torch.allclose(forced.mel_before, synthesis.before, atol=1e-4)
    assert torch.allclose(forced.mel_after, synthesis.mels, atol=1e-4)
    assert torch.allclose(forced.alignment, synthesis.alignment, atol=1e-5)


def test_inference_stops_at_the_stop_token_or_the_limit():
    net = transformer().eval()
    phonemes, lengths = phoneme_batch()
    with torch.no_grad():
        net.stop_out.bias.fill_(10.0)  # stop at once
    once = net.infer(phonemes, lengths)
    assert once.lengths.tolist() == [2, 2] and once.stopped.all() and once.mels.shape[1] == 2
    with torch.no_grad():
        net.stop_out.weight.zero_()
        net.stop_out.bias.fill_(-10.0)  # never stop: cut at max_frames (60 frames = 30 steps)
    never = net.infer(phonemes, lengths)
    assert never.lengths.tolist() == [60, 60] and not never.stopped.any()
    assert net.infer(phonemes, lengths, max_frames=7).lengths.tolist() == [6, 6]  # 3 whole steps of 2 frames


def test_loss_targets_by_hand():
    stop, valid = step_targets(torch.tensor([5, 6, 1]), 4, 2)  # 3, 3 and 1 steps of r = 2 frames
    assert stop.tolist() == [[0, 0, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    assert valid.tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [1, 0, 0, 0]]
    w = guided_attention_weights(torch.tensor([2]), torch.tensor([2]), 3, 3, 0.5)
    assert w[0, 0, 0] == 0 and w[0, 1, 1] == 0  # on the diagonal
    assert w[0, 0, 1] == pytest.approx(1 - math.exp(-0.25 / 0.5))  # l / L - s / S = 0.5, 2 sigma^2 = 0.5
    assert w[0, 2].abs().sum() == 0 and w[0, :, 2].abs().sum() == 0  # outside the sentence
    eye = torch.eye(4)[None]  # [1, S=4, L=4] a diagonal alignment
    assert diagonality(eye, torch.tensor([4]), torch.tensor([4])) == 1.0
    flipped = eye.flip(-1)
    assert diagonality(flipped, torch.tensor([4]), torch.tensor([4])) == 0.0
    # the mel and stop terms by hand: one sentence of 2 frames, r = 2, one step
    target = torch.zeros(1, 2, N_MELS)
    out = TTSOutput(torch.ones(1, 2, N_MELS), torch.full((1, 2, N_MELS), 2.0), torch.tensor([[0.0]]), None)
    batch = TTSBatch(["x"], torch.tensor([[3, 2]]), torch.tensor([2]), target, torch.tensor([2]), torch.ones(1, 2))
    parts = tts_loss(out, batch, 2, stop_pos_weight=5.0)
    assert parts["mel"] == pytest.approx(3.0) and parts["mel_l1"] == pytest.approx(2.0)
    assert parts["stop"] == pytest.approx(math.log(2.0))  # BCE(0 logit, 1), weight 5 / weight 5
    assert parts["loss"] == pytest.approx(3.0 + math.log(2.0))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="frames_per_step must be an int >= 1"):
        transformer(frames_per_step=0)
    with pytest.raises(ValueError, match="prenet_dropout must be a probability"):
        tacotron(prenet_dropout=1.0)
    with pytest.raises(ValueError, match="causal=True mixers"):
        transformer(decoder_mixer=mixer_factory("softmax", n_heads=2, causal=False))
    with pytest.raises(ValueError, match="longer than the model's limit of max_phonemes=4"):
        transformer(max_phonemes=4).infer(*phoneme_batch())



def test_budget_clock_counts_process_cpu_time():
    import time

    from seqmix.apps.tts.module import TTSModule

    def build(clock):
        return TTSModule(lambda symbols: transformer(), SYMBOLS, budget_minutes=1.0, budget_clock=clock)

    with pytest.raises(ValueError, match="budget_clock must be 'wall' or 'cpu'"):
        build("gpu")
    cpu, wall = build("cpu"), build("wall")
    before = time.process_time()
    assert before <= cpu.budget_clock() <= time.process_time()
    time.sleep(0.05)  # wall time passes, this process's CPU time barely does
    assert cpu.budget_clock() - before < 0.04 and wall.budget_clock() - time.perf_counter() <= 0
    cpu.on_train_start()
    assert 0 <= cpu.schedule_progress(10, 0, 100) < 0.01  # a fraction of 1 CPU minute, not of the steps


# ---------------------------------------------------------------- the CLI: fit 2 steps, then predict
SENTENCES = [Sentence("train-0000", "train", "P1", "abstract", "We test it on short sentences."),
             Sentence("train-0001", "train", "P1", "abstract", "Speech synthesis turns text into audio."),
             Sentence("val-0000", "val", "P2", "abstract", "Hello world, this is a test."),
             Sentence("test-0000", "test", "P3", "abstract", "A small model speaks here.")]
FIT_ARGS = ["--model.network.init_args.d_model", "16", "--model.network.init_args.n_encoder_layers", "1",
            "--model.network.init_args.n_decoder_layers", "1", "--model.network.init_args.conv_channels", "16",
            "--model.network.init_args.prenet_hidden", "16", "--model.network.init_args.postnet_channels", "16",
            "--model.network.init_args.max_phonemes", "64", "--model.warmup_steps", "0",
            "--data.batch_size", "2", "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "false"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tts_corpus")
    synthesize(SENTENCES, root, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def checkpoint(corpus, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("tts_run")
    assert main(["tts", "fit", "--config", str(CONFIGS / "transformer_tts.yaml"), "--data.manifest", str(corpus),
                 "--trainer.default_root_dir", str(run), *FIT_ARGS]) == 0
    found = sorted(run.rglob("*.ckpt"))
    assert found, "fit wrote no checkpoint"
    return found[0]


def test_tacotron_config_fits_two_steps(corpus, tmp_path):
    args = ["--model.network.init_args.encoder_dim", "16", "--model.network.init_args.prenet_hidden", "16",
            "--model.network.init_args.attention_rnn_dim", "16", "--model.network.init_args.decoder_rnn_dim", "16",
            "--model.network.init_args.postnet_channels", "16", "--model.warmup_steps", "0",
            "--data.batch_size", "2", "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]"]
    assert main(["tts", "fit", "--config", str(CONFIGS / "tacotron.yaml"), "--data.manifest", str(corpus),
                 "--trainer.default_root_dir", str(tmp_path), *args]) == 0


def test_predict_writes_speech_and_a_plot(checkpoint, tmp_path, capsys):
    out, png = tmp_path / "speech.wav", tmp_path / "mel.png"
    assert main(["tts", "predict", "--ckpt", str(checkpoint), "--text", "We test short sentences.", "--out", str(out),
                 "--plot", str(png), "--max-seconds", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "phonemes: wiː tˈɛst ʃˈɔːɹt sˈɛntənsᵻz" in printed and "real-time factor" in printed
    wav, rate = read_wav(out)
    assert rate == 22050 and 0 < len(wav) <= 0.5 * 22050 + 256 and len(wav) % 256 == 0
    assert png.stat().st_size > 1000
    hifigan = tmp_path / "hifigan.wav"
    assert main(["tts", "predict", "--ckpt", str(checkpoint), "--text", "We test it.", "--out", str(hifigan),
                 "--vocoder", "hifigan", "--max-seconds", "0.3"]) == 0
    assert 0 < len(read_wav(hifigan)[0]) <= 0.3 * 22050 + 256


def test_test_command_scores_a_checkpoint(corpus, checkpoint, tmp_path, capsys):
    assert main(["tts", "test", "--config", str(CONFIGS / "transformer_tts.yaml"), "--data.manifest", str(corpus),
                 "--ckpt_path", str(checkpoint), "--trainer.default_root_dir", str(tmp_path), *FIT_ARGS]) == 0
    printed = capsys.readouterr().out
    for key in ("test/mel_l1", "test/stop_acc", "test/free_mel_l1", "test/duration_ratio", "test/diagonality"):
        assert key in printed


def one_line_error(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as err:
        main(argv)
    message = str(err.value.code)
    first, rest = message.split("\n", 1)
    assert rest.startswith("(SEQMIX_TRACEBACK=1"), message  # one line, then the traceback hint
    assert first.startswith("seqmix tts predict: error: ")
    return first


def test_predict_errors_are_one_line(checkpoint, tmp_path):
    base = ["tts", "predict", "--ckpt", str(checkpoint), "--out", str(tmp_path / "x.wav")]
    assert "--text is empty" in one_line_error([*base, "--text", "  "])
    message = one_line_error([*base, "--text", "Hello 日本"])
    assert "cannot phonemise" in message and "'日'" in message
    message = one_line_error([*base, "--text", "Hello world."])  # /h/ and /l/: not in the 2 training sentences
    assert "phonemes the model never saw in training ('h', 'l'" in message
    message = one_line_error([*base, "--text", "We test short sentences " * 6])
    assert "the model reads at most 64" in message
    message = one_line_error(["tts", "predict", "--ckpt", str(checkpoint), "--text", "Hello.", "--out",
                              str(tmp_path / "missing" / "x.wav")])
    assert "cannot be written" in message and "does not exist" in message
    message = one_line_error(["tts", "predict", "--ckpt", str(checkpoint), "--text", "Hello.", "--out", str(tmp_path)])
    assert "is a directory" in message
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "seqmix_app": "forecasting", "hyper_parameters": {}}, other)
    message = one_line_error(["tts", "predict", "--ckpt", str(other), "--text", "Hello.", "--out",
                              str(tmp_path / "y.wav")])
    assert "checkpoint of `seqmix forecasting fit`, not tts" in message
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "y.wav").exists()
