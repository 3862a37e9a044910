"""The abstractive summarization networks: the pointer-generator Summarizer (NSE memory, coverage, highlight
prior), the seq2seq LSTM baseline, and their search (beam with trigram blocking, greedy)."""

from __future__ import annotations

import copy

import pytest
import torch

from seqmix.apps.summarization.data import parse_paper
from seqmix.apps.summarization.datamodule import collate, encode_example
from seqmix.apps.summarization.search import beam_search, greedy_search, repeated_trigram_tokens
from seqmix.apps.summarization.seq2seq import Seq2Seq, reversed_source
from seqmix.apps.summarization.summarizer import NSEMemory, Summarizer
from seqmix.apps.summarization.vocab import EOS_ID, Vocabulary, tokenize

RECORD = {
    "id": "P00-0001", "title": "A paper",
    "summary": {"challenge": "parsing long sentences is slow", "approach": "we prune the chart with zorbl",
                "outcome": "parsing is ten times faster"},
    "sentences": {"abstract": ["We study parsing .", "Parsing long sentences is slow ."],
                  "introduction": ["We prune the chart with a zorbl classifier ."],
                  "conclusion": ["Parsing is ten times faster ."]},
    "highlights": {"challenge": {"abstract": [0, 1], "introduction": [0], "conclusion": [0]},
                   "approach": {"abstract": [0, 0], "introduction": [1], "conclusion": [0]},
                   "outcome": {"abstract": [0, 0], "introduction": [0], "conclusion": [1]}},
}
LIMITS = dict(max_sentences=8, max_words=12, max_summary_len=10)


def tiny_batch():
    paper = parse_paper(RECORD, "x:1")
    second = copy.deepcopy(RECORD)
    second["id"] = "P00-0002"
    second["sentences"]["introduction"].append("Charts are pruned by a classifier .")
    second["highlights"] = {a: {**h, "introduction": h["introduction"] + [0]} for a, h in RECORD["highlights"].items()}
    other = parse_paper(second, "x:2")
    words = [t for p in (paper, other) for s in (*p.sentences, *p.summaries.values()) for t in tokenize(s)]
    vocab = Vocabulary.build(words, max_size=1000, min_count=1)
    vocab = Vocabulary([w for w in vocab.words if w != "zorbl"])  # one out-of-vocabulary word to copy
    items = [encode_example(p, a, vocab, **LIMITS) for p, a in ((paper, "approach"), (other, "challenge"),
                                                                  (paper, "outcome"))]
    return collate(items, len(vocab)), vocab


def tiny_summarizer(vocab, **overrides):
    torch.manual_seed(0)
    args = dict(d_model=16, glove=False, dropout=0.0, decoder_layers=1, attention_dim=8, max_length=12,
                beam_size=2)
    args.update(overrides)
    return Summarizer(vocab.words, **args)


def test_the_summarizer_overfits_one_batch():
    batch, vocab = tiny_batch()
    model = tiny_summarizer(vocab)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = model.loss(batch)
        assert set(loss) == {"loss", "nll", "coverage", "highlight_bce"}
        optimiser.zero_grad()
        loss["loss"].backward()
        optimiser.step()
        losses.append(loss["nll"].item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_the_final_distribution_sums_to_one_and_copies_an_oov_by_its_extended_id():
    batch, vocab = tiny_batch()
    oov = len(vocab) + batch.oovs[0].index("zorbl")
    assert (batch.target[0] == oov).any()  # the approach summary copies 'zorbl'
    model = tiny_summarizer(vocab).eval()
    with torch.no_grad():
        # 'zorbl' has no vocabulary row (P_vocab = 0 for it); p_gen ~ 0: the distribution is the copy alone
        model.p_gen.bias.fill_(-1e4)
        probs, a, _, source = model(batch)
    assert torch.allclose(probs.sum(-1), torch.ones_like(probs[..., 0]), atol=1e-5)
    copied = (a[0] * (source.ext_ids[0] == oov)).sum(-1)  # [L] attention mass on the OOV's positions
    assert copied.min() > 0
    assert torch.allclose(probs[0, :, oov], copied, atol=1e-6)
    assert probs[0, :, oov].min() > 0  # no vocabulary row for it: only the copy gives it mass


def test_coverage_loss_is_the_sum_of_min_attention_coverage_on_a_hand_example():
    batch, vocab = tiny_batch()
    model = tiny_summarizer(vocab)
    probs, a, c, _ = model(batch)
    hand_a = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.0, 0.1, 0.9]])
    hand_c = torch.stack([torch.zeros(3), hand_a[0], hand_a[0] + hand_a[1]])
    expected = torch.minimum(hand_a, hand_c).sum(-1)  # [0, 0.5, 0.1 + 0.5]
    assert torch.allclose(expected, torch.tensor([0.0, 0.5, 0.6]))
    assert torch.allclose(c[:, 1:], torch.cumsum(a, 1)[:, :-1], atol=1e-6)  # coverage = earlier attentions summed
    assert torch.equal(c[:, 0], torch.zeros_like(c[:, 0]))
    keep = batch.target != 0
    formula = (torch.minimum(a, c).sum(-1) * keep).sum() / keep.sum()
    assert torch.allclose(model.loss(batch)["coverage"], formula)


def test_trigram_blocking_forbids_a_repeated_trigram():
    assert repeated_trigram_tokens([5, 6, 7, 5, 6]) == {7}
    assert repeated_trigram_tokens([5, 6, 7, 6, 5]) == set()
    # a step function that always prefers 5, 6, 7 in a cycle: without blocking it repeats "5 6 7"
    def step(tokens, state):
        log_probs = torch.full((tokens.shape[0], 10), -5.0)
        nxt = torch.where(tokens == 5, 6, torch.where(tokens == 6, 7, 5))
        log_probs[torch.arange(tokens.shape[0]), nxt] = -0.1
        log_probs[:, EOS_ID] = -3.0
        return log_probs, state

    common = dict(batch_size=1, bos=2, eos=EOS_ID, pad=0, max_length=8)
    free = greedy_search(step, torch.zeros(1), block_trigrams=False, **common)[0]
    assert free[:6] == [5, 6, 7, 5, 6, 7]
    for blocked in (greedy_search(step, torch.zeros(1), block_trigrams=True, **common)[0],
                    beam_search(step, torch.zeros(1), beam_size=3, block_trigrams=True, **common)[0]):
        trigrams = [tuple(blocked[i:i + 3]) for i in range(len(blocked) - 2)]
        assert len(trigrams) == len(set(trigrams)), blocked


def test_step_by_step_decoding_equals_the_teacher_forced_distribution():
    batch, vocab = tiny_batch()
    model = tiny_summarizer(vocab, decoder_layers=2).eval()
    with torch.no_grad():
        probs, _, _, source = model(batch)
        state = model.init_decoding(source)
        n_ext = model.n_extended(batch)
        for t in range(batch.target_input.shape[1]):
            p_t, state = model.step(batch.target_input[:, t], state, n_ext)
            assert torch.allclose(p_t, probs[:, t], atol=1e-5), t


@pytest.mark.parametrize("decoder_mixer", ["gla", "lstm"])
def test_step_equals_forward_with_a_recurrent_decoder_mixer(decoder_mixer):
    from seqmix.core.blocks import mixer_factory

    batch, vocab = tiny_batch()
    model = tiny_summarizer(vocab, decoder_mixer=mixer_factory(decoder_mixer, n_heads=2, causal=True)).eval()
    with torch.no_grad():
        probs, _, _, source = model(batch)
        state = model.init_decoding(source)
        for t in range(batch.target_input.shape[1]):
            p_t, state = model.step(batch.target_input[:, t], state, model.n_extended(batch))
            assert torch.allclose(p_t, probs[:, t], atol=1e-4), t


def test_beam_one_is_greedy_and_generate_names_words_and_sentences():
    batch, vocab = tiny_batch()
    model = tiny_summarizer(vocab).eval()
    assert model.decode(batch, beam_size=1) == greedy_search_of(model, batch)
    outputs = model.generate(batch)
    assert len(outputs) == 3
    for i, out in enumerate(outputs):
        assert out.tokens is not None and "<unk>" not in out.tokens and len(out.tokens) <= model.max_length
        assert len(out.selected) == 2 and set(out.selected) <= set(batch.sentence_ids[i].tolist())
        assert len(out.sentence_scores) == int(batch.sentence_mask[i].sum())


def greedy_search_of(model, batch):
    """beam_search with one beam, through the generic function (not the greedy shortcut)."""
    source = model.encode(batch)
    n_ext = model.n_extended(batch)

    def step(tokens, state):
        p, state = model.step(tokens, state, n_ext)
        return (p + 1e-10).log(), state

    return beam_search(step, model.init_decoding(source), batch_size=3, bos=2, eos=EOS_ID, pad=0, beam_size=1,
                       max_length=model.max_length, forbid=(1, 0, 2))


def test_a_trained_summarizer_copies_the_oov_word():
    batch, vocab = tiny_batch()
    model = tiny_summarizer(vocab, beam_size=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(30):
        optimiser.zero_grad()
        model.loss(batch)["loss"].backward()
        optimiser.step()
    model.eval()
    assert "zorbl" in model.generate(batch)[0].tokens


def test_nse_memory_ignores_padded_sentences():
    torch.manual_seed(0)
    memory = NSEMemory(8, passes=2).eval()
    x = torch.randn(2, 4, 8)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    out = memory(x, mask)
    changed = x.clone()
    changed[0, 3] = 100.0
    assert torch.allclose(memory(changed, mask)[0], out[0], atol=1e-6)
    assert torch.equal(out[0, 3], torch.zeros(8))


def test_bad_arguments_fail_naming_them():
    _, vocab = tiny_batch()
    from seqmix.core.blocks import mixer_factory

    with pytest.raises(ValueError, match="min_length=12 must be below max_length=12"):
        tiny_summarizer(vocab, min_length=12)
    with pytest.raises(ValueError, match="coverage_weight must be >= 0"):
        tiny_summarizer(vocab, coverage_weight=-1.0)
    with pytest.raises(ValueError, match="noncausal_cross"):
        tiny_summarizer(vocab, cross_mixer=mixer_factory("gla", n_heads=2, causal=False))
    with pytest.raises(ValueError, match="causal=True mixers"):
        tiny_summarizer(vocab, decoder_mixer=mixer_factory("softmax", n_heads=2, causal=False))
    with pytest.raises(ValueError, match="beam_size must be an int >= 1"):
        Seq2Seq(vocab.words, d_model=8, glove=False, beam_size=0)


def test_seq2seq_reverses_the_truncated_source():
    batch, _ = tiny_batch()
    ids, mask = reversed_source(batch, 5)
    assert ids.shape == (3, 5) and bool(mask.all())
    first_words = batch.words[0][batch.word_mask[0]][:5]  # the paper's first 5 words in order
    assert torch.equal(ids[0], first_words.flip(0))
    ids, mask = reversed_source(batch, 100)
    n = int(batch.word_mask[0].sum())
    assert torch.equal(ids[0, :n], batch.words[0][batch.word_mask[0]].flip(0)) and not mask[0, n:].any()


def test_seq2seq_overfits_steps_like_its_forward_and_beam_one_is_greedy():
    batch, vocab = tiny_batch()
    torch.manual_seed(0)
    model = Seq2Seq(vocab.words, d_model=16, layers=1, glove=False, dropout=0.0, max_length=12, beam_size=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = model.loss(batch)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
    model.eval()
    with torch.no_grad():
        log_probs = model(batch)
        table = model._table()
        memory, mask, condition = model.encode(batch, table)
        from seqmix.apps.summarization.seq2seq import Seq2SeqState

        state = Seq2SeqState(model.decoder.init_states(3), memory, model.score(memory), mask, condition,
                             torch.zeros(3, dtype=torch.long))
        for t in range(batch.target_input.shape[1]):
            lp, state = model.step(batch.target_input[:, t], state, table)
            assert torch.allclose(lp, log_probs[:, t], atol=1e-4), t
    greedy = model.decode(batch, beam_size=1)
    assert greedy == model.decode(batch, beam_size=1)
    outputs = model.generate(batch)
    assert all(o.tokens is not None and o.selected == [] for o in outputs)
