"""BICO (seqmix/apps/lm/bico.py): mirrored bidirectional attention equals its formula (and is undone after),
unsupported mixers are refused, masks, masked positions are never attended, the loss reads only masked positions,
the seeded 50/50 mixing, prefix-LM scoring against a brute-force loop, and ``objective: bico`` of the LanguageModel."""

from __future__ import annotations

import functools

import pytest
import torch

from seqmix.apps.lm.bico import BICOObjective, bidirectional, bidirectional_nats, causal_loss, span_mask
from seqmix.apps.lm.data import IGNORE_INDEX
from seqmix.apps.lm.model import CausalLM
from seqmix.apps.lm.module import LanguageModel
from seqmix.apps.lm.tokenizer import ByteTokenizer
from seqmix.core.blocks import MixerStack
from seqmix.core.mixers.rnn import LSTM
from seqmix.core.mixers.sliding_window import SlidingWindowAttention
from seqmix.core.mixers.softmax import SoftmaxAttention


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_net(mixer=None) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(mixer or functools.partial(SoftmaxAttention, n_heads=2, rotary=True), vocab_size=40, max_len=32,
                    d_model=16, n_layers=2, positions="rotary" if mixer is None else "none")


def test_mirrored_attention_equals_its_formula():
    """score(i, j) = q_i . R(-theta |i - j|) k_j / sqrt(K): the distance, not its side; prefix and key mask."""
    torch.manual_seed(1)
    mixer = SoftmaxAttention(8, n_heads=2, rotary=True).double()
    stack = MixerStack(8, 1, lambda d: mixer, causal=True)
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    keys = torch.ones(2, 6, dtype=torch.bool)
    keys[1, 4] = False
    q, k, v = mixer.qkv(x)  # [B, H, T, K] each, not rotated
    t = x.shape[1]
    scores = torch.empty(2, 2, t, t, dtype=torch.float64)
    for i in range(t):
        for j in range(t):  # rotating k_j alone by -theta |i - j| (offset -|i - j|) gives the relative score
            scores[:, :, i, j] = (q[:, :, i] * mixer.rotary(k[:, :, j:j + 1], offset=-abs(i - j))[:, :, 0]).sum(-1)
    for prefix in (None, 3, 0):
        limit = t if prefix is None else prefix
        visible = torch.tensor([[j <= i or j < limit for j in range(t)] for i in range(t)]) & keys[:, None, None]
        weights = torch.softmax((scores / 2).masked_fill(~visible, float("-inf")), -1)  # K = 4: sqrt(K) = 2
        expected = mixer.out(torch.einsum("bhts,bhsv->bhtv", weights, v).transpose(1, 2).flatten(2))  # -> [B, T, D]
        with bidirectional(stack, prefix=prefix):
            got = mixer(x, mask=keys)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    causal = mixer(x, mask=keys)  # out of the mode again: ordinary causal attention, = prefix 0
    torch.testing.assert_close(causal, expected, rtol=1e-10, atol=1e-10)
    assert not mixer.mirrored_bidirectional and mixer.bidirectional_prefix is None
    mixer.causal = False  # plain non-causal rotary attention differs from the mirrored form
    with bidirectional(stack):
        mirrored = mixer(x)
    assert not torch.allclose(mixer(x), mirrored, atol=1e-4)


def test_bidirectional_lets_a_position_see_the_future_and_is_undone():
    net = tiny_net().eval()
    tokens = torch.randint(0, 40, (1, 10))
    changed = tokens.clone()
    changed[0, 7] = (changed[0, 7] + 1) % 40  # a future token of position 2
    x, y = net.embed_tokens(tokens), net.embed_tokens(changed)
    assert torch.allclose(net.stack(x)[0, 2], net.stack(y)[0, 2], atol=1e-6)  # causal: position 2 cannot see 7
    with bidirectional(net.stack):
        assert not torch.allclose(net.stack(x)[0, 2], net.stack(y)[0, 2], atol=1e-4)  # it sees it now
    with bidirectional(net.stack, prefix=5):  # a prefix LM: position 2 sees 0 .. 4 only
        assert torch.allclose(net.stack(x)[0, 2], net.stack(y)[0, 2], atol=1e-6)
    assert not any(block.mixer.mirrored_bidirectional for block in net.stack.blocks)
    with pytest.raises(RuntimeError), bidirectional(net.stack):
        raise RuntimeError("inside")
    assert not any(block.mixer.mirrored_bidirectional for block in net.stack.blocks)  # restored after an error too
    with bidirectional(net.stack), pytest.raises(ValueError, match="mirrored bidirectional mode is self attention"):
        net.stack.blocks[0].mixer(x, return_state=True)


def test_unsupported_mixers_are_refused_with_the_fix():
    net = tiny_net(functools.partial(LSTM, n_heads=2))
    with pytest.raises(ValueError, match=r"BICO needs bidirectional attention, but layer 0's LSTM is a recurrent "
                                         r"mixer.*use softmax attention or objective: next_token"):
        with bidirectional(net.stack):
            pass
    window = tiny_net(functools.partial(SlidingWindowAttention, n_heads=2, window=4))
    with pytest.raises(ValueError, match=r"implemented for softmax attention without a window, but layer 0's mixer is "
                                         r"SlidingWindowAttention"):
        with bidirectional(window.stack):
            pass
    with pytest.raises(ValueError, match="BICO needs bidirectional attention"):
        LanguageModel(ByteTokenizer().to_json(), mixer=functools.partial(LSTM, n_heads=2), d_model=16, n_layers=1,
                      positions="none", objective="bico")


def test_span_mask():
    g = torch.Generator().manual_seed(3)
    mask = span_mask(64, 40, ratio=0.3, span=4, generator=g)
    assert mask.shape == (64, 40) and mask.dtype == torch.bool
    assert not mask[:, 0].any() and mask.any(1).all()
    assert 0.15 < mask.float().mean() < 0.35  # about ratio, less where spans overlap
    again = span_mask(64, 40, ratio=0.3, span=4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(mask, again)
    tokens = span_mask(200, 40, ratio=0.15, span=1, generator=g)  # the paper's token-level masking
    assert 0.12 < tokens.float().mean() < 0.19 and tokens.any(1).all()
    with pytest.raises(ValueError, match=r"BICOObjective: mask_ratio must lie in \(0, 1\)"):
        BICOObjective(16, mask_ratio=1.0)
    with pytest.raises(ValueError, match=r"BICOObjective: causal_ratio must lie in \[0, 1\)"):
        BICOObjective(16, causal_ratio=1.0)


def test_a_masked_position_is_never_attended():
    net = tiny_net().eval()
    bico = BICOObjective(16)
    tokens = torch.randint(0, 40, (2, 9))
    masked = torch.zeros(2, 9, dtype=torch.bool)
    masked[0, 3] = masked[1, 6] = True
    before = bico.masked_hidden(net, tokens, masked)
    with torch.no_grad():
        bico.mask_vector.add_(torch.randn(16))  # what a masked position holds: only its own output may change
    after = bico.masked_hidden(net, tokens, masked)
    assert torch.allclose(before[~masked], after[~masked], atol=1e-6)
    assert not torch.allclose(before[masked], after[masked], atol=1e-4)
    changed = tokens.clone()
    changed[masked] = (changed[masked] + 1) % 40  # the hidden token itself: nothing changes
    assert torch.allclose(bico.masked_hidden(net, changed, masked), after, atol=1e-6)


def test_loss_reads_the_masked_positions_only():
    net = tiny_net()
    bico = BICOObjective(16, mask_ratio=0.2, span=2, causal_ratio=0.0)
    inputs = torch.randint(0, 40, (3, 12))
    targets = torch.cat([inputs[:, 1:], torch.randint(0, 40, (3, 1))], 1)
    g = lambda: torch.Generator().manual_seed(0)
    drawn = g()
    bico.draws_causal(drawn)  # forward draws the objective first, then the masks
    masked = span_mask(3, 12, ratio=0.2, span=2, generator=drawn)
    loss = bico(net, inputs, targets, generator=g())
    loss.backward()
    assert torch.isfinite(loss) and bico.mask_vector.grad is not None and bico.mask_vector.grad.any()
    unmasked = targets.clone()
    unmasked[:, :-1][~masked[:, 1:]] = (unmasked[:, :-1][~masked[:, 1:]] + 1) % 40  # targets BICO must not read
    assert torch.allclose(bico(net, inputs, unmasked, generator=g()), loss)
    padded = targets.clone()
    padded[0, :-1][masked[0, 1:]] = IGNORE_INDEX  # row 0's masked targets are padding: only the others count
    assert not torch.allclose(bico(net, inputs, padded, generator=g()), loss)
    names = torch.zeros(3, 12, dtype=torch.bool)
    names[:, 2:6] = True
    whole = BICOObjective(16, segment_ratio=1.0).masks(inputs, names, torch.Generator().manual_seed(0))
    assert whole[:, 2:6].all()  # ours: the segment masked whole


def test_the_fifty_fifty_mixing_is_seeded():
    net = tiny_net()
    bico = BICOObjective(16)
    g, h = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    draws = [bico.draws_causal(g) for _ in range(200)]
    assert draws == [bico.draws_causal(h) for _ in range(200)]  # seeded
    assert 70 < sum(draws) < 130  # about half the steps next-token
    assert not any(BICOObjective(16, causal_ratio=0.0).draws_causal(g) for _ in range(20))
    inputs = torch.randint(0, 40, (2, 10))
    targets = torch.roll(inputs, -1, 1)
    seed = next(s for s in range(100) if bico.draws_causal(torch.Generator().manual_seed(s)))
    other = next(s for s in range(100) if not bico.draws_causal(torch.Generator().manual_seed(s)))
    causal = bico(net, inputs, targets, generator=torch.Generator().manual_seed(seed))
    assert torch.allclose(causal, causal_loss(net, inputs, targets))  # a next-token step is the causal LM's loss
    assert not torch.allclose(bico(net, inputs, targets, generator=torch.Generator().manual_seed(other)), causal)


def test_prefix_lm_scoring_equals_a_brute_force_loop():
    net = tiny_net().eval()
    prompt, continuations = [3, 4, 5], [[6, 7, 8], [9], [10, 11]]
    nats = bidirectional_nats(net, prompt, continuations, batch_rows=2)  # padding and two batches
    assert [n.shape for n in nats] == [(3,), (1,), (2,)]
    for c, got in zip(continuations, nats):
        for j in range(len(c)):  # token j from prompt + c[:j] alone, the prompt read both ways
            tokens = torch.tensor([prompt + c[:j]])
            with bidirectional(net.stack, prefix=len(prompt)):
                hidden = net.stack(net.embed_tokens(tokens))  # [1, p + j, D]
            expected = torch.nn.functional.cross_entropy(net.token_logits(hidden[0, -1])[None], torch.tensor([c[j]]))
            assert torch.allclose(got[j], expected, atol=1e-5)
    causal = torch.nn.functional.cross_entropy(net(torch.tensor([prompt]))[0, -1][None], torch.tensor([6]))
    assert not torch.allclose(nats[0][0], causal, atol=1e-4)  # the prompt really was read both ways
    with pytest.raises(ValueError, match="the prompt and every continuation need at least one token"):
        bidirectional_nats(net, [], [[1]])


def test_language_model_bico_objective_trains_bidirectionally_and_evaluates_causally():
    module = LanguageModel(ByteTokenizer().to_json(), mixer=functools.partial(SoftmaxAttention, n_heads=2, rotary=True),
                           d_model=16, n_layers=2, max_len=32, objective="bico")
    module.log = lambda *args, **kwargs: None
    module.bico.causal_ratio = 0.0  # a denoising step (a next-token step would equal the causal loss)
    tokens = torch.randint(0, 256, (2, 17))
    train, nats, _ = module.objective_loss(tokens[:, :-1], tokens[:, 1:], "train")
    val, val_nats, _ = module.objective_loss(tokens[:, :-1], tokens[:, 1:], "val")
    assert torch.allclose(nats, val_nats)  # the LM head's causal nats in both
    assert torch.allclose(val, val_nats.mean()) and not torch.allclose(train, val)  # BICO's loss in training only
    assert "bico.mask_vector" in module.state_dict()
