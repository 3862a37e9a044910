"""Future Token Prediction (seqmix/apps/lm/ftp.py): the targets are the next N tokens, the decoder is causal over
them and sees the position's vector only through the pseudo-sequence, the loss weights, the smoothness measure,
and the LanguageModel's ``objective: ftp`` (its head trained on detached vectors)."""

from __future__ import annotations

import functools

import pytest
import torch

from seqmix.apps.lm.data import IGNORE_INDEX
from seqmix.apps.lm.ftp import FutureTokenHead, adjacent_cosine, future_targets
from seqmix.apps.lm.module import LanguageModel
from seqmix.apps.lm.tokenizer import ByteTokenizer
from seqmix.core.mixers.softmax import SoftmaxAttention


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_lm(objective: str = "ftp", **extra) -> LanguageModel:
    module = LanguageModel(ByteTokenizer().to_json(), mixer=functools.partial(SoftmaxAttention, n_heads=2, rotary=True),
                           d_model=16, n_layers=2, max_len=32, objective=objective, ftp_tokens=3, ftp_pseudo_len=2,
                           ftp_layers=1, **extra)
    module.log = lambda *args, **kwargs: None  # no trainer here
    return module


def test_future_targets_are_the_next_n_tokens():
    tokens = torch.arange(10, 21)[None]  # x_0 .. x_10
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # targets[:, t] = x_{t+1}
    future = future_targets(targets, 3)  # [1, 10, 3]
    assert future.shape == (1, 10, 3)
    for t in range(10):
        for n in range(3):
            expected = int(tokens[0, t + 1 + n]) if t + 1 + n <= 10 else IGNORE_INDEX
            assert int(future[0, t, n]) == expected
    assert future[0, 0].tolist() == [11, 12, 13] and future[0, -1].tolist() == [20, IGNORE_INDEX, IGNORE_INDEX]
    with pytest.raises(ValueError, match="future_targets: n_future must be an int >= 1"):
        future_targets(targets, 0)


def test_decoder_is_causal_over_the_future_tokens_and_reads_the_vector():
    torch.manual_seed(0)
    head = FutureTokenHead(16, n_future=4, pseudo_len=2, n_layers=1, n_heads=2)
    embed = torch.nn.Embedding(50, 16)
    hidden = torch.randn(3, 16)
    future = torch.randint(0, 50, (3, 4))
    logits = head.logits(hidden, future, embed)  # [3, 4, 50]
    assert logits.shape == (3, 4, 50)
    changed = future.clone()
    changed[:, 2:] = (changed[:, 2:] + 1) % 50  # tokens 3 and 4 ahead
    # offset n reads tokens < n only: offsets 1..3 (indices 0..2) do not move; offset 4 (index 3) does
    assert torch.allclose(head.logits(hidden, changed, embed)[:, :3], logits[:, :3], atol=1e-6)
    assert not torch.allclose(head.logits(hidden, changed, embed)[:, 3], logits[:, 3])
    assert not torch.allclose(head.logits(hidden + 1.0, future, embed)[:, 0], logits[:, 0])  # the pseudo-sequence


def test_loss_weights_and_errors():
    head = FutureTokenHead(16, n_future=3, gamma=0.5, n_heads=2)
    assert head.weights.tolist() == [1.0, 0.5, 0.25]
    hidden, targets = torch.randn(2, 6, 16), torch.randint(0, 40, (2, 6))
    loss, per_offset = head(hidden, targets, torch.nn.Embedding(40, 16))
    assert loss.ndim == 0 and torch.isfinite(loss) and per_offset.shape == (3,)
    sampled = FutureTokenHead(16, n_future=3, n_heads=2, sample_positions=2)
    assert torch.isfinite(sampled(hidden, targets, torch.nn.Embedding(40, 16))[0])
    with pytest.raises(ValueError, match=r"FutureTokenHead: gamma must lie in \(0, 1\]"):
        FutureTokenHead(16, gamma=0.0)
    with pytest.raises(ValueError, match="FutureTokenHead: pseudo_len must be an int >= 1"):
        FutureTokenHead(16, pseudo_len=0)


def test_adjacent_cosine():
    same = torch.ones(2, 5, 4)
    assert float(adjacent_cosine(same)) == pytest.approx(1.0)
    flip = torch.ones(1, 4, 3) * torch.tensor([1.0, -1.0, 1.0, -1.0])[None, :, None]
    assert float(adjacent_cosine(flip)) == pytest.approx(-1.0)
    valid = torch.tensor([[True, True, False, False]])
    assert float(adjacent_cosine(flip, valid)) == pytest.approx(-1.0)


def test_language_model_ftp_objective():
    torch.manual_seed(0)
    module = tiny_lm("ftp")
    assert module.ftp is not None and module.bico is None
    tokens = torch.randint(0, 256, (2, 17))
    loss, nats, hidden = module.objective_loss(tokens[:, :-1], tokens[:, 1:], "train")
    assert nats.shape == (2, 16) and hidden.shape == (2, 16, 16)
    assert float(loss) > float(nats.mean())  # the head's loss plus the FTP loss
    # the head reads detached vectors: the head's loss alone moves no weight of the stack
    head_only = nats.mean()
    head_only.backward()
    assert all(p.grad is None or not p.grad.any() for p in module.net.stack.parameters())
    with pytest.raises(ValueError, match="LanguageModel: objective='mtp' is unknown; choose 'next_token', 'ftp'"):
        tiny_lm("mtp")
