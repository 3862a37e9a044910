"""Bidirectional: two causal mixers, one over the reversed sequence, merged into a non-causal mixer."""

from __future__ import annotations

import pytest
import torch

from seqmix.core.blocks import mixer_factory
from seqmix.core.mixers.bidirectional import Bidirectional
from seqmix.core.mixers.softmax import SoftmaxAttention

D, T = 16, 9
CAUSAL = [("mamba", {"d_state": 4, "chunk_size": 4}), ("gla", {"n_heads": 2}), ("lstm", {}),
          ("softmax", {"n_heads": 2})]


def build(name: str, arguments: dict, merge: str = "add") -> Bidirectional:
    torch.manual_seed(0)
    return Bidirectional(D, mixer_factory(name, **arguments), merge=merge)


@pytest.mark.parametrize("merge", ["add", "concat"])
@pytest.mark.parametrize("name,arguments", CAUSAL, ids=[n for n, _ in CAUSAL])
def test_every_output_depends_on_tokens_on_both_sides(name, arguments, merge):
    mixer = build(name, arguments, merge)
    assert not mixer.causal and mixer.patterns == {"noncausal_self"}
    x = torch.randn(2, T, D, requires_grad=True)
    t = T // 2
    mixer(x)[:, t].pow(2).sum().backward()
    reach = x.grad.abs().sum(dim=(0, 2))  # [T]: how much y_t moves with each input token
    assert reach[0] > 0 and reach[-1] > 0, f"y_{t} ignores the first or the last token: {reach}"
    # the causal inner mixer alone sees only the past
    x.grad = None
    mixer.forward_mixer(x)[:, t].pow(2).sum().backward()
    assert x.grad[:, t + 1:].abs().max() == 0


@pytest.mark.parametrize("name,arguments", CAUSAL, ids=[n for n, _ in CAUSAL])
def test_add_equals_forward_plus_reversed_backward(name, arguments):
    mixer = build(name, arguments, "add").eval()
    x = torch.randn(3, T, D)
    f, b = mixer.forward_mixer, mixer.backward_mixer
    expected = f(x) + torch.flip(b(torch.flip(x, [1])), [1])
    torch.testing.assert_close(mixer(x), expected)
    # reversal by explicit indices: the backward mixer reads x_{T-1} first, and its first output is y_{T-1}'s
    reversed_by_index = x[:, torch.arange(T - 1, -1, -1)]
    torch.testing.assert_close(b(reversed_by_index)[:, 0], mixer(x)[:, -1] - f(x)[:, -1])


def test_concat_equals_a_linear_map_of_both_directions():
    mixer = build("gla", {"n_heads": 2}, "concat").eval()
    x = torch.randn(2, T, D)
    both = torch.cat([mixer.forward_mixer(x), mixer.backward_mixer(x.flip(1)).flip(1)], dim=-1)  # [B, T, 2D]
    torch.testing.assert_close(mixer(x), both @ mixer.out.weight.T + mixer.out.bias)


def test_the_two_directions_have_their_own_weights():
    mixer = build("gla", {"n_heads": 2})
    first = dict(mixer.forward_mixer.named_parameters())
    for name, p in mixer.backward_mixer.named_parameters():
        assert p.data_ptr() != first[name].data_ptr(), f"{name} is shared between the directions"
        if p.dim() == 2:  # the projections start from different random draws (norm scales start at one)
            assert not torch.equal(p, first[name]), f"{name} starts equal in both directions"


@pytest.mark.parametrize("merge", ["add", "concat"])
def test_gradients_reach_every_parameter_of_both_directions(merge):
    mixer = build("mamba", {"d_state": 4, "chunk_size": 4}, merge)
    x = torch.randn(2, T, D, requires_grad=True)
    mixer(x).pow(2).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_it_refuses_non_causal_and_non_causal_capable_inner_mixers():
    with pytest.raises(ValueError, match="causal=False.*already sees the whole sequence"):
        Bidirectional(D, mixer_factory("softmax", n_heads=2, causal=False))
    with pytest.raises(ValueError, match="no causal_self pattern"):
        Bidirectional(D, mixer_factory("bra", n_heads=2, n_win=4, topk=2))
    with pytest.raises(ValueError, match="already Bidirectional"):
        Bidirectional(D, lambda d: Bidirectional(d, mixer_factory("gla", n_heads=2)))
    with pytest.raises(TypeError, match="must build a seqmix Mixer"):
        Bidirectional(D, lambda d: torch.nn.Linear(d, d))
    with pytest.raises(ValueError, match="d_model=8.*wrapper d_model=16"):
        Bidirectional(D, lambda d: SoftmaxAttention(8, n_heads=2))
    with pytest.raises(ValueError, match="merge='mean' is unknown"):
        Bidirectional(D, mixer_factory("gla", n_heads=2), merge="mean")


def test_it_has_no_state_mask_or_context():
    mixer = build("gla", {"n_heads": 2})
    x = torch.randn(2, T, D)
    with pytest.raises(ValueError, match="causal=True"):
        mixer(x, return_state=True)
    with pytest.raises(ValueError, match="does not take a key mask"):
        mixer(x, mask=torch.ones(2, T, dtype=torch.bool))
    with pytest.raises(ValueError, match="step needs causal=True"):
        mixer.step(x[:, 0], None)
    with pytest.raises(ValueError, match="keeps no state"):
        mixer.state_size(T)
