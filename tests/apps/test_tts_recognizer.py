"""The TTS app's CTC phoneme recogniser (issue 32, intelligibility): edit distance and PER by hand, greedy CTC
decoding, the targets, the model's shapes, masking and a save / load round trip, and that a few steps learn."""

from __future__ import annotations

import pytest
import torch

from seqmix.apps.tts.recognizer import (BLANK, PhonemeRecognizer, ctc_greedy_decode, edit_distance, inventory,
                                        load_recognizer, phoneme_error_rate, recognition_symbols, save_recognizer)
from seqmix.core.blocks import mixer_factory


@pytest.mark.parametrize("reference, hypothesis, distance", [
    ("", "", 0), ("abc", "abc", 0), ("abc", "", 3), ("", "ab", 2),
    ("kitten", "sitting", 3),  # k->s, e->i, +g
    ("flaw", "lawn", 2),  # -f, +n
    ("abc", "acb", 2),  # no transpositions: two substitutions
    ("intention", "execution", 5),
])
def test_edit_distance_hand_cases(reference, hypothesis, distance):
    assert edit_distance(reference, hypothesis) == distance
    assert edit_distance(list(reference), list(hypothesis)) == distance
    assert edit_distance(hypothesis, reference) == distance  # symmetric with unit costs


def test_phoneme_error_rate_is_corpus_level():
    # 1 substitution in 3 + 2 deletions in 2 + 1 insertion on 1 -> 4 / 6
    assert phoneme_error_rate([list("abc"), list("de"), list("f")], [list("abd"), [], list("fg")]) == pytest.approx(4 / 6)
    assert phoneme_error_rate(["ab"], ["xyzw"]) == pytest.approx(2.0)  # insertions: PER can exceed 1
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        phoneme_error_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no symbols"):
        phoneme_error_rate([""], ["a"])


def test_greedy_decoding_merges_repeats_and_drops_blanks():
    paths = torch.tensor([[0, 1, 1, 0, 1, 2, 2, 0, 3],  # 1 1 (blank between) 2 3
                          [2, 2, 2, 0, 0, 0, 1, 1, 1]])  # 2, then 1 cut by the length 6
    log_probs = torch.nn.functional.one_hot(paths, 4).float().log()  # [B, T, V]
    assert ctc_greedy_decode(log_probs, torch.tensor([9, 6])) == [[1, 1, 2, 3], [2]]


def test_targets_drop_stress_spaces_and_punctuation():
    assert recognition_symbols("ɪn ðɪs pˈeɪpɚ, wiː") == list("ɪnðɪspeɪpɚwiː")
    symbols = inventory(["ab ˈc", "c,d"])
    assert symbols == [BLANK, "a", "b", "c", "d"]


def tiny(symbols, **kwargs) -> PhonemeRecognizer:
    return PhonemeRecognizer(symbols, d_model=16, n_layers=1, conv_channels=16,
                             mixer=mixer_factory("softmax", n_heads=2, causal=False, rotary=True), **kwargs)


def test_shapes_padding_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = tiny(inventory(["abcd"])).eval()
    mels = torch.randn(2, 21, 80)
    log_probs, lengths = model(mels, torch.tensor([21, 12]))
    assert log_probs.shape == (2, 11, 5) and lengths.tolist() == [11, 6]
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 11), atol=1e-5)
    # frames past a sentence's length do not change its outputs within its length
    alone, _ = model(mels[1:, :12], torch.tensor([12]))
    assert torch.allclose(alone[0, :6], log_probs[1, :6], atol=1e-5)
    config = {"symbols": model.symbols, "d_model": 16, "n_layers": 1, "conv_channels": 16,
              "mixer": {"name": "softmax", "args": {"n_heads": 2, "causal": False, "rotary": True}}}
    path = save_recognizer(model, tmp_path / "rec.pt", config)
    again = load_recognizer(path)
    assert torch.allclose(again(mels, torch.tensor([21, 12]))[0], log_probs)
    (tmp_path / "other.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):
        load_recognizer(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="benchmarks.tts_recognizer"):
        load_recognizer(tmp_path / "missing.pt")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="symbols must be"):
        tiny(["a", "b"])
    with pytest.raises(ValueError, match="stride"):
        tiny(inventory(["ab"]), stride=0)
    with pytest.raises(ValueError, match=r"\[B, T, 80\]"):
        tiny(inventory(["ab"]))(torch.zeros(1, 10, 40), torch.tensor([10]))


def test_a_few_steps_learn_two_sentences():
    torch.manual_seed(0)
    model = tiny(inventory(["abc", "ca"]), dropout=0.0, time_masks=0, freq_masks=0)
    mels = torch.zeros(2, 24, 80)
    mels[0, 2:8, :20], mels[0, 8:14, 20:40], mels[0, 14:20, 40:60] = 3.0, 3.0, 3.0  # a b c as band patterns
    mels[1, 2:8, 40:60], mels[1, 8:14, :20] = 3.0, 3.0  # c a
    targets, target_lengths = torch.tensor([[1, 2, 3], [3, 1, 0]]), torch.tensor([3, 2])
    lengths = torch.tensor([24, 20])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.loss(mels, lengths, targets, target_lengths).item()
    for _ in range(150):
        opt.zero_grad()
        loss = model.loss(mels, lengths, targets, target_lengths)
        loss.backward()
        opt.step()
    assert float(loss) < 0.25 * first
    model.eval()
    assert model.transcribe(mels, lengths) == [["a", "b", "c"], ["c", "a"]]
