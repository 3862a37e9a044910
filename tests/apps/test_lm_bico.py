"""BICO (seqmix/apps/lm/bico.py): the bidirectional mask really lets a position see the future (and is undone
after), recurrent mixers are refused, the span masks, the loss reads only masked positions, scoring in BICO's
mode, and ``objective: bico`` of the LanguageModel."""

from __future__ import annotations

import functools

import pytest
import torch

from seqmix.apps.lm.bico import BICOObjective, bidirectional, bidirectional_nats, span_mask
from seqmix.apps.lm.data import IGNORE_INDEX
from seqmix.apps.lm.model import CausalLM
from seqmix.apps.lm.module import LanguageModel
from seqmix.apps.lm.tokenizer import ByteTokenizer
from seqmix.core.mixers.rnn import LSTM
from seqmix.core.mixers.softmax import SoftmaxAttention


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_net(mixer=None) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(mixer or functools.partial(SoftmaxAttention, n_heads=2, rotary=True), vocab_size=40, max_len=32,
                    d_model=16, n_layers=2, positions="rotary" if mixer is None else "none")


def test_bidirectional_lets_a_position_see_the_future_and_is_undone():
    net = tiny_net().eval()
    tokens = torch.randint(0, 40, (1, 10))
    changed = tokens.clone()
    changed[0, 7] = (changed[0, 7] + 1) % 40  # a future token of position 2
    x, y = net.embed_tokens(tokens), net.embed_tokens(changed)
    assert torch.allclose(net.stack(x)[0, 2], net.stack(y)[0, 2], atol=1e-6)  # causal: position 2 cannot see 7
    with bidirectional(net.stack):
        assert not torch.allclose(net.stack(x)[0, 2], net.stack(y)[0, 2], atol=1e-4)  # it sees it now
    assert all(block.mixer.causal for block in net.stack.blocks)
    with pytest.raises(RuntimeError), bidirectional(net.stack):
        raise RuntimeError("inside")
    assert all(block.mixer.causal for block in net.stack.blocks)  # restored after an error too


def test_recurrent_mixers_are_refused_with_the_fix():
    net = tiny_net(functools.partial(LSTM, n_heads=2))
    with pytest.raises(ValueError, match=r"BICO needs bidirectional attention, but layer 0's LSTM is a recurrent "
                                         r"mixer.*use an attention mixer or objective: next_token"):
        with bidirectional(net.stack):
            pass
    with pytest.raises(ValueError, match="BICO needs bidirectional attention"):
        LanguageModel(ByteTokenizer().to_json(), mixer=functools.partial(LSTM, n_heads=2), d_model=16, n_layers=1,
                      positions="none", objective="bico")


def test_span_mask():
    g = torch.Generator().manual_seed(3)
    mask = span_mask(64, 40, ratio=0.3, span=4, generator=g)
    assert mask.shape == (64, 40) and mask.dtype == torch.bool
    assert not mask[:, 0].any() and mask.any(1).all()
    assert 0.1 < mask.float().mean() < 0.35  # about ratio, less where spans overlap
    again = span_mask(64, 40, ratio=0.3, span=4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(mask, again)
    with pytest.raises(ValueError, match=r"BICOObjective: mask_ratio must lie in \(0, 1\)"):
        BICOObjective(16, mask_ratio=1.0)


def test_loss_reads_the_masked_positions_only():
    net = tiny_net()
    bico = BICOObjective(16, mask_ratio=0.2, span=2)
    inputs = torch.randint(0, 40, (3, 12))
    targets = torch.cat([inputs[:, 1:], torch.randint(0, 40, (3, 1))], 1)
    g = lambda: torch.Generator().manual_seed(0)
    masked = span_mask(3, 12, ratio=0.2, span=2, generator=g())
    loss = bico(net, inputs, targets, generator=g())
    loss.backward()
    assert torch.isfinite(loss) and bico.mask_vector.grad is not None and bico.mask_vector.grad.any()
    unmasked = targets.clone()
    unmasked[:, :-1][~masked[:, 1:]] = (unmasked[:, :-1][~masked[:, 1:]] + 1) % 40  # targets BICO must not read
    assert torch.allclose(bico(net, inputs, unmasked, generator=g()), loss)
    padded = targets.clone()
    padded[0, :-1][masked[0, 1:]] = IGNORE_INDEX  # row 0's masked targets are padding: only the others count
    assert not torch.allclose(bico(net, inputs, padded, generator=g()), loss)


def test_end_masks_put_one_mask_where_the_visible_text_ends():
    bico = BICOObjective(16, end_ratio=0.5)
    spans = span_mask(64, 20, ratio=0.3, span=4, generator=torch.Generator().manual_seed(0))
    keys = torch.ones(64, 20, dtype=torch.bool)
    keys[:32, 15:] = False  # half the rows right-padded after 15 tokens
    masked, ends = bico.end_masks(spans, keys, torch.Generator().manual_seed(1))
    changed = (masked != spans).any(1)
    assert 10 < int(changed.sum()) < 54  # about end_ratio of the rows
    for row in changed.nonzero().flatten().tolist():
        (cut,) = masked[row].nonzero().flatten().tolist()  # one mask, inside the row's real tokens
        assert 1 <= cut <= int(keys[row].sum()) - 1
        assert ends[row].tolist() == [i <= cut for i in range(20)]  # nothing after the mask is visible
    assert torch.equal(masked[~changed], spans[~changed]) and torch.equal(ends[~changed], keys[~changed])
    net = tiny_net()
    inputs = torch.randint(0, 40, (4, 12))
    loss = bico(net, inputs, torch.roll(inputs, -1, 1), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match=r"BICOObjective: end_ratio must lie in \[0, 1\)"):
        BICOObjective(16, end_ratio=1.0)


def test_bidirectional_nats_reads_the_position_before_the_mask():
    net = tiny_net().eval()
    bico = BICOObjective(16)
    prompt, continuation = [3, 4, 5], [6, 7]
    nats = bidirectional_nats(net, bico, prompt, [continuation, [9]])
    assert [n.shape for n in nats] == [(2,), (1,)]
    tokens = torch.tensor([[3, 4, 5, 6, 0]])  # the second token of the continuation: input p + c[:1] + [m]
    masked = torch.tensor([[False, False, False, False, True]])
    hidden = bico.masked_hidden(net, tokens, masked)
    expected = torch.nn.functional.cross_entropy(net.token_logits(hidden[0, 3])[None], torch.tensor([7]))
    assert torch.allclose(nats[0][1], expected, atol=1e-5)
    with pytest.raises(ValueError, match="the prompt and every continuation need at least one token"):
        bidirectional_nats(net, bico, [], [[1]])


def test_language_model_bico_objective_trains_bidirectionally_and_evaluates_causally():
    module = LanguageModel(ByteTokenizer().to_json(), mixer=functools.partial(SoftmaxAttention, n_heads=2, rotary=True),
                           d_model=16, n_layers=2, max_len=32, objective="bico")
    module.log = lambda *args, **kwargs: None
    tokens = torch.randint(0, 256, (2, 17))
    train, nats, _ = module.objective_loss(tokens[:, :-1], tokens[:, 1:], "train")
    val, val_nats, _ = module.objective_loss(tokens[:, :-1], tokens[:, 1:], "val")
    assert torch.allclose(nats, val_nats)  # the LM head's causal nats in both
    assert torch.allclose(val, val_nats.mean()) and not torch.allclose(train, val)  # BICO's loss in training only
    assert "bico.mask_vector" in module.state_dict()
