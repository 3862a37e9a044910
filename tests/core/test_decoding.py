"""The generation loop (seqmix.core.decoding): greedy equals the argmax of the full forward re-run at
each length, beam 1 equals greedy, a wide beam finds the exhaustive best, seeded sampling is
reproducible, top-k 1 is greedy, top-p keeps to the nucleus, the three stops, cross attention."""

import itertools

import pytest
import torch
from torch import Tensor, nn

from seqmix.core.blocks import MixerStack, mixer_factory
from seqmix.core.decoding import filter_logits, generate, select_batch
from seqmix.core.mixer import KVCache

VOCAB, D_MODEL, MAX_LEN = 7, 16, 32


class TinyLM(nn.Module):
    """A two-layer causal LM over ``VOCAB`` tokens (a decoder with cross attention when ``cross``)."""

    def __init__(self, mixer: str, *, cross: bool = False, seed: int = 2, **arguments: object):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.pos = nn.Parameter(torch.randn(MAX_LEN, D_MODEL) * 0.5)  # [L, D]
        cross_mixer = mixer_factory("softmax", n_heads=2, causal=False) if cross else None
        self.stack = MixerStack(D_MODEL, 2, mixer_factory(mixer, causal=True, **arguments), causal=True,
                                cross_mixer=cross_mixer, mlp_ratio=2.0)
        self.head = nn.Linear(D_MODEL, VOCAB)
        self.eval()

    def embed_tokens(self, tokens: Tensor, offset: int) -> Tensor:
        return self.embed(tokens) + self.pos[offset : offset + tokens.shape[1]]  # [B, T, D]

    def token_logits(self, hidden: Tensor) -> Tensor:
        return self.head(hidden) * 3.0  # peaked enough that ties never happen

    def full_logits(self, tokens: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None):
        with torch.no_grad():
            hidden = self.stack(self.embed_tokens(tokens, 0), context=context, context_mask=context_mask)
        return self.token_logits(hidden)  # [B, T, V]


def greedy_by_forward(model: TinyLM, prompt: Tensor, n: int, **context: Tensor) -> Tensor:
    """The reference: re-run the whole forward at each length and take the argmax of the last position."""
    tokens = prompt
    for _ in range(n):
        tokens = torch.cat([tokens, model.full_logits(tokens, **context)[:, -1].argmax(-1, keepdim=True)], 1)
    return tokens[:, prompt.shape[1]:]


PROMPT = torch.tensor([[1, 2, 3], [4, 0, 6]])


@pytest.mark.parametrize("mixer,arguments", [("softmax", {"n_heads": 2, "rotary": True}),
                                             ("gla", {"n_heads": 2, "chunk_size": 16}),
                                             ("sliding_window", {"n_heads": 2, "window": 4})])
def test_greedy_equals_argmax_of_the_full_forward(mixer, arguments):
    model = TinyLM(mixer, **arguments)
    out = generate(model, PROMPT, max_new_tokens=9)
    assert torch.equal(out.tokens, greedy_by_forward(model, PROMPT, 9))
    assert out.tokens.shape == (2, 9) and out.lengths.tolist() == [9, 9]
    log_probs = model.full_logits(torch.cat([PROMPT, out.tokens], 1)).log_softmax(-1)[:, 2:-1]  # [B, 9, V]
    expected = log_probs.gather(-1, out.tokens[..., None]).sum((1, 2))
    torch.testing.assert_close(out.scores, expected, rtol=1e-5, atol=1e-5)


def test_beam_one_is_greedy_and_a_wide_beam_is_exhaustive():
    model = TinyLM("softmax", n_heads=2)
    greedy = generate(model, PROMPT, max_new_tokens=6)
    beam = generate(model, PROMPT, max_new_tokens=6, strategy="beam", num_beams=1)
    assert torch.equal(beam.tokens, greedy.tokens)
    torch.testing.assert_close(beam.scores, greedy.scores / 6)  # length_penalty 1: the mean log-probability
    # with VOCAB ** 2 beams every 2-token continuation survives: the best one is the exhaustive best
    wide = generate(model, PROMPT, max_new_tokens=2, strategy="beam", num_beams=VOCAB**2)
    pairs = torch.tensor(list(itertools.product(range(VOCAB), repeat=2)))  # [V^2, 2]
    for row in range(2):
        tokens = torch.cat([PROMPT[row].expand(len(pairs), -1), pairs], 1)  # [V^2, 5]
        log_probs = model.full_logits(tokens).log_softmax(-1)[:, 2:4]  # [V^2, 2, V]
        total = log_probs.gather(-1, pairs[..., None]).sum((1, 2))  # [V^2]
        assert torch.equal(wide.tokens[row], pairs[total.argmax()]), f"row {row}"
        torch.testing.assert_close(wide.scores[row], total.max() / 2)  # length_penalty 1: the mean


def test_length_penalty_prefers_longer_hypotheses():
    """A hypothesis that ends early has fewer (negative) log-probabilities: with length_penalty 0 it
    wins on the raw sum; a large penalty divides by length and prefers the long ones."""
    model = TinyLM("softmax", n_heads=2, seed=3)
    first = generate(model, PROMPT[:1], max_new_tokens=1).tokens[0, 0].item()  # the most likely first token
    raw = generate(model, PROMPT[:1], max_new_tokens=5, strategy="beam", num_beams=4, length_penalty=0.0,
                   end_token=first)
    long = generate(model, PROMPT[:1], max_new_tokens=5, strategy="beam", num_beams=4, length_penalty=3.0,
                    end_token=first)
    assert raw.lengths.item() == 1 and raw.tokens[0, 0] == first, "ending at once has the best raw sum"
    assert long.lengths.item() > 1, "a length penalty of 3 prefers a longer hypothesis"


def test_sampling_is_reproducible_and_top_k_one_is_greedy():
    model = TinyLM("gla", n_heads=2, chunk_size=16)
    a = generate(model, PROMPT, max_new_tokens=8, strategy="sample", temperature=2.0, seed=5)
    b = generate(model, PROMPT, max_new_tokens=8, strategy="sample", temperature=2.0, seed=5)
    c = generate(model, PROMPT, max_new_tokens=8, strategy="sample", temperature=2.0, seed=6)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    top1 = generate(model, PROMPT, max_new_tokens=8, strategy="sample", top_k=1, seed=0)
    assert torch.equal(top1.tokens, generate(model, PROMPT, max_new_tokens=8).tokens)


def test_top_p_keeps_to_the_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = filter_logits(logits, top_k=None, top_p=0.7).isfinite()
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7 <= 0.5 + 0.3
    assert filter_logits(logits, top_k=None, top_p=0.5).isfinite().tolist() == [[True, False, False, False]]
    assert filter_logits(logits, top_k=3, top_p=None).isfinite().tolist() == [[True, True, True, False]]

    class Fixed(TinyLM):
        def token_logits(self, hidden):
            return logits.expand(*hidden.shape[:-1], 4)  # the same distribution at every step

    out = generate(Fixed("softmax", n_heads=2), torch.zeros(64, 1, dtype=torch.long), max_new_tokens=4,
                   strategy="sample", top_p=0.7, seed=0)
    assert set(out.tokens.unique().tolist()) == {0, 1}, "top-p 0.7 samples tokens 0 and 1 only, both"


def test_stops_on_end_token_predicate_and_length():
    model = TinyLM("softmax", n_heads=2)
    free = generate(model, PROMPT, max_new_tokens=8).tokens
    end = free[0, 2].item()  # the first sequence produces it third
    out = generate(model, PROMPT, max_new_tokens=8, end_token=end, pad_token=0)
    first_end = [int((row == end).nonzero()[0]) + 1 if (row == end).any() else 8 for row in free]
    assert out.lengths.tolist() == first_end
    for row, length in enumerate(first_end):
        assert torch.equal(out.tokens[row, :length], free[row, :length])
        assert (out.tokens[row, length:] == 0).all(), "padded after its end"
    stopped = generate(model, PROMPT, max_new_tokens=8, stop=lambda generated: generated.sum(1) >= 8)
    reached = [int((row.cumsum(0) >= 8).nonzero()[0]) + 1 if row.sum() >= 8 else 8 for row in free]
    assert stopped.lengths.tolist() == reached and stopped.tokens.shape[1] == max(reached)
    short = generate(model, PROMPT, max_new_tokens=3)
    assert torch.equal(short.tokens, free[:, :3]) and short.lengths.tolist() == [3, 3]
    with pytest.raises(ValueError, match="stop must return a bool tensor"):
        generate(model, PROMPT, max_new_tokens=3, stop=lambda generated: True)


def test_decoder_with_cross_attention_steps_like_its_forward():
    model = TinyLM("softmax", cross=True, n_heads=2, rotary=True)
    context = torch.randn(2, 5, D_MODEL)
    context_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])  # the second context is padded
    out = generate(model, PROMPT, max_new_tokens=7, context=context, context_mask=context_mask)
    assert torch.equal(out.tokens, greedy_by_forward(model, PROMPT, 7, context=context, context_mask=context_mask))
    beam = generate(model, PROMPT, max_new_tokens=7, strategy="beam", num_beams=1, context=context,
                    context_mask=context_mask)
    assert torch.equal(beam.tokens, out.tokens)
    with pytest.raises(ValueError, match="pass context"):
        generate(model, PROMPT, max_new_tokens=2)


def test_select_batch_reorders_every_tensor_and_keeps_counters():
    cache = KVCache(torch.arange(3.0)[:, None, None, None], torch.zeros(3, 1, 1, 1), None, 4)
    state = [cache, (torch.tensor([10, 11, 12]), torch.tensor(7))]
    chosen = select_batch(state, torch.tensor([2, 2, 0]))
    assert chosen[0].keys.flatten().tolist() == [2.0, 2.0, 0.0] and chosen[0].seen == 4
    assert chosen[1][0].tolist() == [12, 12, 10] and chosen[1][1] == 7
    with pytest.raises(TypeError, match="got dict"):
        select_batch({"a": torch.zeros(1)}, torch.tensor([0]))


def test_options_that_do_not_apply_are_refused():
    model = TinyLM("softmax", n_heads=2)
    with pytest.raises(ValueError, match="top_k apply to strategy='sample'"):
        generate(model, PROMPT, max_new_tokens=2, top_k=3)
    with pytest.raises(ValueError, match="num_beams apply to strategy='beam'"):
        generate(model, PROMPT, max_new_tokens=2, strategy="sample", num_beams=3)
    with pytest.raises(ValueError, match="prompt must be int64"):
        generate(model, PROMPT[:, :0], max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1"):
        generate(model, PROMPT, max_new_tokens=0)
