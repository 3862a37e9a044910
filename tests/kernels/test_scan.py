"""softmax_scan (Aaren's prefix attention): the chunked form against the token-by-token
reference (outputs, final states, every gradient), both against explicit softmax attention,
the associativity of the merge, large scores, and the Aaren mixer against its definition."""

import pytest
import torch

from seqmix.core import build_mixer
from seqmix.kernels.scan import combine, empty_state, softmax_scan, softmax_scan_chunk, softmax_scan_naive

RATIO = 1e-5  # relative RMS error allowed between chunk and naive in fp32


def make_inputs(b, t, h, dv, *, with_state, seed=0, dtype=torch.float32, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    s = (torch.randn(b, t, h, generator=gen, dtype=dtype) * scale).requires_grad_()
    v = torch.randn(b, t, h, dv, generator=gen, dtype=dtype).requires_grad_()
    state = None
    if with_state:
        state = (torch.randn(b, h, generator=gen, dtype=dtype).requires_grad_(),
                 torch.randn(b, h, dv, generator=gen, dtype=dtype).requires_grad_(),
                 (torch.rand(b, h, generator=gen, dtype=dtype) + 0.5).requires_grad_())
    return s, v, state


def outputs_and_grads(fn, s, v, state, *, output_final_state, **kwargs):
    o, final = fn(s, v, initial_state=state, output_final_state=output_final_state, **kwargs)
    gen = torch.Generator().manual_seed(123)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    if output_final_state:
        loss = loss + sum((x * torch.randn(x.shape, generator=gen, dtype=x.dtype)).sum() for x in final)
    else:
        assert final is None, "output_final_state=False must return None as the final state"
    inputs = [s, v, *(state or ())]
    return [o.detach(), *(x.detach() for x in (final or ())), *torch.autograd.grad(loss, inputs)]


def softmax_prefix_reference(s, v):
    """Explicit causal softmax of one query per head: ``[B, T, H] x [B, T, H, V] -> [B, T, H, V]``."""
    t = s.shape[1]
    future = torch.ones(t, t, dtype=torch.bool).triu(1)  # [T (query), T (key)]
    scores = s.transpose(1, 2)[:, :, None, :].expand(-1, -1, t, -1).masked_fill(future, float("-inf"))  # [B, H, T, T]
    return torch.einsum("bhtj,bjhv->bthv", torch.softmax(scores, -1), v)


@pytest.mark.parametrize("t", [1, 63, 130])
@pytest.mark.parametrize("chunk_size", [1, 16, 64])
@pytest.mark.parametrize("with_state,output_final_state", [(False, False), (True, True), (False, True)])
def test_softmax_scan_chunk_matches_naive(t, chunk_size, with_state, output_final_state, assert_rel_close):
    inputs = make_inputs(2, t, 3, 8, with_state=with_state)
    expected = outputs_and_grads(softmax_scan_naive, *inputs, output_final_state=output_final_state)
    actual = outputs_and_grads(softmax_scan_chunk, *inputs, output_final_state=output_final_state,
                               chunk_size=chunk_size)
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_rel_close(a, e, RATIO, f"T={t} C={chunk_size} state={with_state} result {i}")


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_softmax_scan_equals_softmax_attention(impl, assert_rel_close):
    s, v, _ = make_inputs(2, 70, 2, 5, with_state=False, dtype=torch.float64)
    s, v = s.detach(), v.detach()
    o, _ = softmax_scan(s, v, impl=impl, chunk_size=16)
    assert_rel_close(o, softmax_prefix_reference(s, v), 1e-12, f"{impl} vs explicit softmax")


def test_softmax_scan_state_continues_the_prefix(assert_rel_close):
    s, v, _ = make_inputs(1, 90, 2, 4, with_state=False, dtype=torch.float64)
    s, v = s.detach(), v.detach()
    o, _ = softmax_scan(s, v)
    _, state = softmax_scan(s[:, :37], v[:, :37], output_final_state=True)
    o2, _ = softmax_scan(s[:, 37:], v[:, 37:], initial_state=state)
    assert_rel_close(o2, o[:, 37:], 1e-12, "second piece from the first piece's state")


def test_combine_is_associative(assert_rel_close):
    gen = torch.Generator().manual_seed(0)
    spans = [(torch.randn(3, generator=gen) * 5, torch.randn(3, 4, generator=gen), torch.rand(3, generator=gen) + 0.1)
             for _ in range(3)]
    left = combine(*combine(*spans[0], *spans[1]), *spans[2])
    right = combine(*spans[0], *combine(*spans[1], *spans[2]))
    for a, e in zip(left, right):
        assert_rel_close(a, e, 1e-6, "(a+b)+c vs a+(b+c)")
    empty = empty_state(3, 1, 4)
    merged = combine(empty[0][:, 0], empty[1][:, 0], empty[2][:, 0], *spans[0])
    for a, e in zip(merged, spans[0]):
        assert_rel_close(a, e, 0.0, "the empty prefix is the identity")


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_softmax_scan_large_scores_stay_finite(impl):
    s, v, _ = make_inputs(1, 100, 2, 4, with_state=False, scale=1e4)
    o, _ = softmax_scan(s, v, impl=impl, chunk_size=16)
    o.sum().backward()
    assert torch.isfinite(o).all() and torch.isfinite(s.grad).all() and torch.isfinite(v.grad).all()


def test_softmax_scan_errors_name_the_problem():
    s, v, _ = make_inputs(1, 5, 2, 4, with_state=False)
    with pytest.raises(ValueError, match=r"v must be \[B, T, H, V\]"):
        softmax_scan(s, v[:, :4])
    with pytest.raises(ValueError, match=r"initial_state must be \(m"):
        softmax_scan(s, v, initial_state=(torch.zeros(1, 2),))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        softmax_scan(s, v, chunk_size=0)


def test_aaren_mixer_is_learned_query_attention(assert_rel_close):
    torch.manual_seed(0)
    mixer = build_mixer("aaren", 16, n_heads=2, chunk_size=8)
    x = torch.randn(2, 30, 16)
    k = mixer.k(x).view(2, 30, 2, 8)  # [B, T, H, K]
    v = mixer.v(x).view(2, 30, 2, 8)  # [B, T, H, V]
    s = torch.einsum("bthk,hk->bth", k, mixer.query) / 8 ** 0.5
    expected = mixer.out(softmax_prefix_reference(s, v).reshape(2, 30, 16))
    assert_rel_close(mixer(x).detach(), expected.detach(), 1e-5,
                     "Aaren vs attention of its learned query over each prefix")
    assert mixer.state_size(10) == mixer.state_size(10_000) == 2 * (8 + 2)
