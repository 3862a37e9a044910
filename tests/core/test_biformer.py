"""Bi-level routing attention (``bra``) beyond the generic mixer tests: it equals dense attention
when every region is routed, routes to the most affine regions, attends to nothing else, and
fails clearly on a grid its regions cannot divide."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqmix.core import build_mixer
from seqmix.core.mixers.biformer import BiLevelRoutingAttention

D, HEADS = 16, 2


def _bra(**kw) -> BiLevelRoutingAttention:
    torch.manual_seed(0)
    return build_mixer("bra", D, n_heads=HEADS, causal=False, **kw)


def _x(t: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, t, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("impl", ["naive", "gather"])
def test_all_regions_equals_full_attention_with_lce(impl, assert_rel_close):
    m = _bra(n_win=4, topk=-1, spatial_shape=(8, 12), impl=impl)
    x = _x(96)
    with torch.no_grad():
        q, k, v = m.qkv(x).chunk(3, -1)  # [B, T, D] each
        split = lambda z: z.view(2, 96, HEADS, D // HEADS).transpose(1, 2)  # [B, T, h, K] -> [B, h, T, K]
        o = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(2, 96, D)
        image = v.transpose(1, 2).reshape(2, D, 8, 12)  # [B, D, H, W]
        lce = F.conv2d(image, m.lce_weight[:, None], m.lce_bias, padding=2, groups=D).flatten(2).transpose(1, 2)
        y, expected = m(x), m.out(o + lce)
    assert_rel_close(y, expected, 1e-5, f"bra impl={impl}, topk=all vs dense attention + LCE")


@pytest.mark.parametrize("shape", [(7, 10), (6, 9)], ids=["padded", "unpadded"])
def test_gather_equals_dense_masked(shape, assert_rel_close):
    # padded: 7 x 10 -> 9 x 12 (key masks in both forms); unpadded: no mask at all (valid=None)
    m = _bra(n_win=3, topk=2, spatial_shape=shape, pad=True, lce_kernel=3)
    x = _x(shape[0] * shape[1])
    results = {}
    for impl in ("naive", "gather"):
        m.impl, m.zero_grad()
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.backward(torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y))
        results[impl] = y.detach(), xi.grad, {n: p.grad.clone() for n, p in m.named_parameters()}
    (y0, gx0, gp0), (y1, gx1, gp1) = results["naive"], results["gather"]
    assert_rel_close(y1, y0, 1e-5, "gather vs naive output")
    assert_rel_close(gx1, gx0, 1e-5, "gather vs naive input grad")
    for n in gp0:
        assert_rel_close(gp1[n], gp0[n], 1e-5, f"gather vs naive grad {n}")


def test_routes_to_the_most_affine_regions():
    m = _bra(n_win=4, topk=3, spatial_shape=(8, 8))
    x = _x(64)
    q, k, _ = m.qkv(x).chunk(3, -1)
    means = [F.avg_pool2d(z.transpose(1, 2).reshape(2, D, 8, 8), 2).flatten(2).transpose(1, 2) for z in (q, k)]
    affinity = means[0] @ means[1].transpose(1, 2)  # [B, R, R]
    index = m.routed_regions(x)  # [B, R, 3]
    chosen = affinity.gather(2, index)  # [B, R, 3]
    others = affinity.scatter(2, index, float("-inf"))
    assert index.shape == (2, 16, 3)
    assert (chosen.min(-1).values >= others.max(-1).values).all(), "a routed region is less affine than one left out"


def test_a_region_sees_only_its_routed_regions():
    m = _bra(n_win=2, topk=1, spatial_shape=(4, 4), lce_kernel=0).eval()
    x = _x(16)
    index = m.routed_regions(x)[0]  # [R, 1]
    region_of = torch.tensor([(r // 2) * 2 + c // 2 for r in range(4) for c in range(4)])  # token -> region
    query = 0
    unseen = [r for r in range(4) if r not in (query, index[query, 0].item())]  # neither asked nor routed to
    x2 = x.clone()
    # change the regions `query` does not route to, keeping their means (so the routing is the same)
    for r in unseen:
        tokens = (region_of == r).nonzero()[:, 0]
        x2[0, tokens] += torch.tensor([1.0, -1.0, 2.0, -2.0])[:, None] * torch.randn(D)
    with torch.no_grad():
        assert torch.equal(m.routed_regions(x2)[0, query], index[query]), "the routing changed"
        y, y2 = m(x), m(x2)
    mine = (region_of == query).nonzero()[:, 0]
    assert torch.allclose(y[0, mine], y2[0, mine], atol=1e-6), "a region attended to a region it did not route to"
    assert not torch.allclose(y[0], y2[0]), "the output ignores its input"


def test_a_grid_the_regions_cannot_divide_is_a_clear_error():
    with pytest.raises(ValueError, match="n_win=4 regions per side cannot divide the 6x8 token grid.*pad=True"):
        _bra(n_win=4, topk=2, spatial_shape=(6, 8))
    with pytest.raises(ValueError, match="n_win=4 regions cannot divide T=10"):
        _bra(n_win=4, topk=2)(_x(10))
    with pytest.raises(ValueError, match="topk=17 must be in 1..16"):
        _bra(n_win=4, topk=17, spatial_shape=(8, 8))
    with pytest.raises(ValueError, match="spatial_shape=\\(8, 8\\) needs 64 tokens, got T=60"):
        _bra(n_win=4, topk=2, spatial_shape=(8, 8))(_x(60))
    with pytest.raises(ValueError, match="noncausal_self"):
        build_mixer("bra", D, causal=True)
