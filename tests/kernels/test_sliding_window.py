"""sliding_window_attention: the blocked O(T * window) form against the masked quadratic
reference (``attention_naive(..., window=w)``), outputs and gradients, causal and not,
with key masks and with a cache of past keys in front; the errors bad inputs raise; the
mixer's fixed-size state."""

import pytest
import torch

from seqmix.core import build_mixer
from seqmix.kernels.sliding_window import sliding_window_attention, sliding_window_chunk

RATIO = 1e-5


def outputs_and_grads(impl, q, k, v, **options):
    o = sliding_window_attention(q, k, v, impl=impl, **options)
    gen = torch.Generator().manual_seed(123)
    loss = (o * torch.randn(o.shape, generator=gen)).sum()
    return [o.detach(), *torch.autograd.grad(loss, (q, k, v))]


def make_inputs(t, s, *, seed=0, b=2, h=2, dk=8, dv=6):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, dk, generator=gen).requires_grad_()
    k = torch.randn(b, h, s, dk, generator=gen).requires_grad_()
    v = torch.randn(b, h, s, dv, generator=gen).requires_grad_()
    return q, k, v


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("t", [1, 63, 200])
@pytest.mark.parametrize("window", [1, 7, 16, 300])
def test_sliding_window_attention_chunk_matches_naive(causal, t, window, assert_rel_close):
    q, k, v = make_inputs(t, t)
    mask = torch.rand(2, t, generator=torch.Generator().manual_seed(5)) > 0.2 if t > 1 else None
    for key_mask in (None, mask):
        expected = outputs_and_grads("naive", q, k, v, window=window, causal=causal, key_mask=key_mask)
        actual = outputs_and_grads("chunk", q, k, v, window=window, causal=causal, key_mask=key_mask)
        for name, a, e in zip(("o", "dq", "dk", "dv"), actual, expected):
            assert_rel_close(a, e, RATIO, f"causal={causal} T={t} window={window} mask={key_mask is not None} {name}")


@pytest.mark.parametrize("t,s,window", [(1, 17, 16), (5, 21, 16), (63, 79, 16), (40, 500, 7)])
def test_sliding_window_attention_chunk_with_cached_keys(t, s, window, assert_rel_close):
    """Queries are the last T of S positions (a KV cache in front), as in decoding."""
    q, k, v = make_inputs(t, s)
    expected = outputs_and_grads("naive", q, k, v, window=window)
    actual = outputs_and_grads("chunk", q, k, v, window=window)
    for name, a, e in zip(("o", "dq", "dk", "dv"), actual, expected):
        assert_rel_close(a, e, RATIO, f"T={t} S={s} window={window} {name}")


def test_sliding_window_attention_is_local():
    """Changing a key outside every query's window changes nothing; inside it, something."""
    q, k, v = (x.detach() for x in make_inputs(32, 32))
    o = sliding_window_chunk(q, k, v, window=4)
    v2 = v.clone()
    v2[:, :, 10] += 1.0  # seen by queries 10..13 only
    diff = (sliding_window_chunk(q, k, v2, window=4) - o).abs().amax(dim=(0, 1, 3))  # [T]
    assert diff[10:14].min() > 0 and diff[:10].max() == 0 and diff[14:].max() == 0


@pytest.mark.parametrize("call,message", [
    (lambda q, k, v: sliding_window_attention(q, k, v, window=0), "window must be a positive int"),
    (lambda q, k, v: sliding_window_attention(q, k[:, :, :3], v[:, :, :3], window=4), "S >= T"),
    (lambda q, k, v: sliding_window_attention(q, k, v[:, :, :, :, None], window=4), "v must be a 4-D tensor"),
    (lambda q, k, v: sliding_window_attention(q, k[..., :4], v, window=4), "k must be \\[B=2, H=2, S, K=8\\]"),
    (lambda q, k, v: sliding_window_attention(q[:, :, :3], k, v, window=4, causal=False), "S == T"),
    (lambda q, k, v: sliding_window_attention(q, k, v, window=4, key_mask=torch.ones(2, 8)), "key_mask must be a bool"),
    (lambda q, k, v: sliding_window_attention(q, k, v, window=4, impl="flash"), "impl='flash' is unknown"),
    (lambda q, k, v: sliding_window_attention(q, k, v, window=4, impl="triton"), r"impl='triton' is unknown; choose one of \('auto', 'naive', 'chunk'\)"),
])
def test_sliding_window_attention_bad_inputs(call, message):
    q, k, v = (x.detach() for x in make_inputs(8, 8))
    with pytest.raises(ValueError, match=message):
        call(q, k, v)


def test_sliding_window_mixer_state_is_fixed_and_causal_only():
    mixer = build_mixer("sliding_window", 16, n_heads=2, window=5)
    assert mixer.state_size(10) == mixer.state_size(10_000) == 2 * 5 * 16
    state = mixer.init_state(1)
    x = torch.randn(1, 50, 16)
    _, state = mixer(x, state=state, return_state=True)
    assert state[0].shape == (1, 2, 5, 8), "the key cache must stay window-sized"
    with pytest.raises(ValueError, match="window must be a positive int"):
        build_mixer("sliding_window", 16, window=0)
    noncausal = build_mixer("sliding_window", 16, n_heads=2, window=5, causal=False)
    with pytest.raises(ValueError, match="carried state needs causal=True"):
        noncausal(x, return_state=True)
