"""LightNet's mechanisms (the generic tests cover shapes, causality, pieces, naive vs chunk):
the decay is z_{t-1} / z_t of a cumulative sum, the recurrence is the normalised sum, the
non-causal form is the normalised global sum (order-free), MD-LRPE is a relative 2-D rotation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seqmix.core import build_mixer
from seqmix.core.embeddings import LRPE
from seqmix.core.mixers.lightnet import (MDLRPE, LightNet, LightNetState, additive_decay, additive_decay_chunked,
                                         chunked_log_z, grid_positions)

REPO = Path(__file__).resolve().parents[2]


def _qfv(b=2, t=23, h=2, k=4, v=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, k, generator=g, dtype=dtype)
    f = 2 * torch.randn(b, t, h, k, generator=g, dtype=dtype)
    values = torch.randn(b, t, h, v, generator=g, dtype=dtype)
    return q, f, values


def test_additive_decay_is_the_ratio_of_cumulative_sums():
    _, f, _ = _qfv()
    log_z0 = torch.randn(2, 2, 4, dtype=torch.float64)
    for start in (None, log_z0):
        z0 = 0.0 if start is None else start.exp()[:, None]  # [B, 1, H, K]
        z = z0 + f.exp().cumsum(1)  # [B, T, H, K]: z_t = z_0 + sum_{s <= t} exp(f_s)
        key, log_decay, log_z = additive_decay(f, start)
        torch.testing.assert_close(log_z, z.log())
        torch.testing.assert_close(key, f.exp() / z)  # the key is exp(f_t) / z_t = 1 - lambda_t
        torch.testing.assert_close(log_decay[:, 1:].exp(), z[:, :-1] / z[:, 1:])  # lambda_t = z_{t-1} / z_t
        if start is None:  # z_0 = 0: the first token keeps nothing, so its gate is 0 and its key 1
            assert (log_decay[:, 0] == 0).all() and (key[:, 0] == 1).all()
        else:
            torch.testing.assert_close(log_decay[:, 0].exp(), z0[:, 0] / z[:, 0])
        after = 1 if start is None else 0  # with z_0 = 0 the first gate is free (it multiplies S_0 = 0)
        one = (key + log_decay.exp())[:, after:]  # k = 1 - lambda
        torch.testing.assert_close(one, torch.ones_like(one))


def test_additive_decay_is_precise_where_z_is_large():
    """The gate is -softplus(f_t - log z_{t-1}), not the difference of two large logs: at a late token
    that adds little (z ~ e^16, exp(f_T) = 1, lambda_T ~ 1 - 1e-7) it and its gradient match float64 in
    float32 (log z_{T-1} - log z_T would be off by 100%: its digits cancel)."""
    _, f, _ = _qfv(t=64, seed=3)
    f = f + torch.linspace(0, 14, 64, dtype=torch.float64)[None, :, None, None]  # z grows to ~e^16
    f[:, -1] = 0.0
    values, grads = [], []
    for dtype in (torch.float64, torch.float32):
        fi = f.to(dtype).clone().requires_grad_()
        _, log_decay, _ = additive_decay(fi)
        log_decay[:, -1].sum().backward()
        values.append(log_decay[:, -1].detach().double())
        grads.append(fi.grad.double())
    for what, (precise, single) in (("gate", values), ("gradient", grads)):
        err = (single - precise).norm() / precise.norm()
        assert err < 1e-5, f"float32 {what} off by {err:.2e} relative"


@pytest.mark.parametrize("chunk", [1, 4, 16, 64])
def test_chunked_front_end_equals_additive_decay(chunk):
    """The chunked log z (odd length 23, with and without log z_0) gives additive_decay's key, gate and
    log z, values and the gradient of f, in float64 and (at 1e-5) in float32."""
    _, f, _ = _qfv()
    log_z0 = torch.randn(2, 2, 4, dtype=torch.float64)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        for start in (None, log_z0.to(dtype)):
            outs, grads = [], []
            for fn in (lambda x: additive_decay(x, start), lambda x: additive_decay_chunked(x, start, chunk)):
                fi = f.to(dtype).clone().requires_grad_()
                key, log_decay, log_z = fn(fi)
                weights = torch.linspace(-1, 1, key.numel(), dtype=dtype).view_as(key)
                ((key + log_decay + 0.1 * log_z) * weights).sum().backward()
                outs.append(torch.cat([key, log_decay, log_z]).detach())
                grads.append(fi.grad)
            for what, (ref, got) in (("values", outs), ("grad", grads)):
                err = (got - ref).norm() / ref.norm()
                assert err < tol, f"{dtype} chunk={chunk} start={start is not None}: {what} off by {err:.2e}"


def test_chunked_log_z_declines_a_jump_it_cannot_hold_and_the_front_end_falls_back():
    """f jumping 200 nats above log z inside a chunk would underflow the chunk's sums: chunked_log_z
    returns None and additive_decay_chunked gives additive_decay's exact result."""
    f = torch.zeros(1, 8, 1, 1)
    f[0, 4] = 200.0
    assert chunked_log_z(f, None, 8) is None
    assert chunked_log_z(f, None, 4) is not None  # the jump opens a chunk: nothing before it in the chunk
    for got, ref in zip(additive_decay_chunked(f, None, 8), additive_decay(f)):
        assert torch.equal(got, ref)


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_recurrence_is_the_normalised_sum_from_a_state(impl):
    """o_t = q_t (z_0 S_0 + sum_{s <= t} exp(f_s) v_s^T) / z_t / sqrt(K), carried from an initial state."""
    mixer = LightNet(8, n_heads=2, expand_k=1.0, chunk_size=8).double()
    q, f, v = _qfv(v=4)
    s0 = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    log_z0 = torch.randn(2, 2, 4, dtype=torch.float64)
    o, final = mixer.attend(q, f, v, state=LightNetState(s0, log_z0, 5), return_state=True, impl=impl)
    weighted = torch.einsum("bthk,bthv->bthkv", f.exp(), v).cumsum(1)  # [B, T, H, K, V]
    z = log_z0.exp()[:, None] + f.exp().cumsum(1)  # [B, T, H, K]
    memory = (log_z0.exp()[:, None, ..., None] * s0[:, None] + weighted) / z[..., None]  # [B, T, H, K, V]
    expected = torch.einsum("bthk,bthkv->bthv", q, memory) * 4 ** -0.5
    torch.testing.assert_close(o, expected)
    torch.testing.assert_close(final.memory, memory[:, -1])
    torch.testing.assert_close(final.log_z, z[:, -1].log())
    assert final.seen == 5 + 23


def test_chunk_equals_naive_with_state_and_all_gradients(assert_rel_close):
    """Odd lengths, MD-LRPE, an initial state carried from a prefix: outputs and every gradient."""
    results = {}
    for impl in ("naive", "chunk"):
        torch.manual_seed(0)
        mixer = build_mixer("lightnet", 16, n_heads=2, expand_k=1.0, positional="md_lrpe", grid_width=5,
                            chunk_size=8, impl=impl)
        x = torch.randn(2, 37, 16, generator=torch.Generator().manual_seed(1)).requires_grad_()
        _, state = mixer(x[:, :11], return_state=True)  # the state carries gradients into the prefix
        y, final = mixer(x[:, 11:], state=state, return_state=True)
        (y * torch.sin(torch.arange(y.numel(), dtype=y.dtype)).view_as(y)).sum().backward()
        grads = {"x": x.grad, **{n: p.grad for n, p in mixer.named_parameters()}}
        results[impl] = (y.detach(), final, grads)
    (y_ref, s_ref, g_ref), (y, s, g) = results["naive"], results["chunk"]
    assert_rel_close(y, y_ref, 1e-5, "chunk vs naive output")
    assert_rel_close(s.memory.detach(), s_ref.memory.detach(), 1e-5, "final memory")
    assert_rel_close(s.log_z.detach(), s_ref.log_z.detach(), 1e-6, "final log z")
    assert s.seen == s_ref.seen == 37
    assert g.keys() == g_ref.keys()
    for name in g_ref:
        assert_rel_close(g[name], g_ref[name], 1e-5, f"grad {name}")


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_noncausal_is_the_normalised_global_sum(impl):
    """Every query reads S = sum_s exp(f_s) v_s^T / sum_s exp(f_s): the causal state at the last token."""
    mixer = LightNet(8, n_heads=2, expand_k=1.0, causal=False).double()
    q, f, v = _qfv(v=4)
    o, _ = mixer.attend(q, f, v, impl=impl)
    memory = torch.einsum("bthk,bthv->bhkv", f.exp(), v) / f.exp().sum(1)[..., None]  # [B, H, K, V]
    torch.testing.assert_close(o, torch.einsum("bthk,bhkv->bthv", q, memory) * 4 ** -0.5)
    causal = LightNet(8, n_heads=2, expand_k=1.0).double()
    _, final = causal.attend(q, f, v, return_state=True, impl=impl)
    torch.testing.assert_close(final.memory, memory)  # the one scan's end is the non-causal memory


def test_noncausal_without_positions_is_order_free():
    """Permuting the tokens permutes the outputs (no decay depends on the scan order); MD-LRPE breaks it."""
    x = torch.randn(2, 25, 16, generator=torch.Generator().manual_seed(2))
    perm = torch.randperm(25, generator=torch.Generator().manual_seed(3))
    for positional, equivariant in (("none", True), ("md_lrpe", False)):
        torch.manual_seed(0)
        grid = 5 if positional == "md_lrpe" else None
        mixer = build_mixer("lightnet", 16, n_heads=2, causal=False, positional=positional, grid_width=grid)
        with torch.no_grad():
            same = torch.allclose(mixer(x[:, perm]), mixer(x)[:, perm], atol=1e-5)
        assert same == equivariant, f"positional={positional}: permutation equivariance is {same}"


def test_md_lrpe_is_a_norm_preserving_relative_rotation():
    h, k = 2, 6
    rope = MDLRPE(h, k, 2)
    g = torch.Generator().manual_seed(4)
    q, key = torch.randn(1, 1, h, k, generator=g, dtype=torch.float64), torch.randn(1, 1, h, k, generator=g,
                                                                                     dtype=torch.float64)
    x = torch.randn(3, 20, h, k, generator=g, dtype=torch.float64)
    positions = grid_positions(0, 20, 4, None)  # [T, 2]
    torch.testing.assert_close(rope(x, positions).norm(dim=-1), x.norm(dim=-1))  # a rotation per channel pair

    def score(p_q, p_k):
        at = lambda v, p: rope(v, torch.tensor([p], dtype=torch.float64))  # noqa: E731  [1, 1, H, 2K]
        return (at(q, p_q) * at(key, p_k)).sum(-1)  # [1, 1, H]

    base = score((1.0, 2.0), (4.0, 0.0))
    torch.testing.assert_close(score((7.0, 9.0), (10.0, 7.0)), base)  # the same 2-D offset (-3, +2)
    assert not torch.allclose(score((1.0, 2.0), (4.0, 1.0)), base)  # another column offset
    assert not torch.allclose(score((1.0, 2.0), (5.0, 0.0)), base)  # another row offset
    assert not torch.allclose(score((2.0, 1.0), (4.0, 1.0)), score((2.0, 1.0), (5.0, 0.0)))  # axes are told apart


def test_md_lrpe_on_one_axis_is_lrpe_and_the_grid_is_raster():
    x = torch.randn(2, 9, 2, 4, dtype=torch.float64)
    torch.testing.assert_close(MDLRPE(2, 4, 1)(x, grid_positions(3, 9, None)), LRPE(2, 4)(x, 3))
    torch.testing.assert_close(grid_positions(5, 4, 3), torch.tensor([[1.0, 2], [2, 0], [2, 1], [2, 2]],
                                                                      dtype=torch.float64))


def test_state_is_constant_and_starts_empty():
    mixer = LightNet(16, n_heads=2, positional="md_lrpe", grid_width=4)
    state = mixer.init_state(3)
    assert state.memory.shape == (3, 2, 8, 8) and state.log_z.shape == (3, 2, 4) and state.seen == 0
    assert torch.isneginf(state.log_z).all() and mixer.state_size(10) == mixer.state_size(10_000) == 2 * 8 * 8 + 8


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="grid_width=7 places the tokens for a 2-D positional encoding"
                                         ".*'md_lrpe' or 'md_tpe'"):
        LightNet(16, grid_width=7)
    with pytest.raises(ValueError, match="grid_width must be an int >= 1"):
        LightNet(16, positional="md_lrpe", grid_width=0)
    with pytest.raises(ValueError, match="positional='rope' is unknown"):
        LightNet(16, positional="rope")
    with pytest.raises(ValueError, match="the state is a LightNetState"):
        LightNet(16, n_heads=2)(torch.randn(1, 3, 16), state=torch.zeros(1, 2, 4, 8))


def test_vit_config_and_benchmark_row_build_the_same_mixer_on_the_patch_grid():
    """configs/vision/vit_lightnet.yaml and the benchmark's 'ViT(LightNet)' name one mixer, whose grid is the
    ViT's patch grid; the ViT (shrunk to one block) trains on it: a finite loss and gradients everywhere."""
    import yaml

    from benchmarks.vision import MODELS
    from seqmix.apps.vision.vit import ViT
    from seqmix.core.blocks import mixer_factory

    backbone = yaml.safe_load((REPO / "configs" / "vision" / "vit_lightnet.yaml").read_text())["model"]["backbone"]
    mixer = backbone["init_args"]["mixer"]
    assert mixer["class_path"] == f"{LightNet.__module__}.{LightNet.__qualname__}"
    assert MODELS["ViT(LightNet)"].keywords["mixer"].keywords == {**mixer["init_args"], "n_heads": 4}
    grid = ViT(patch=backbone["init_args"]["patch"]).grid  # 28 x 28 images
    assert grid == (mixer["init_args"]["grid_width"],) * 2, f"grid_width is not the ViT's patch grid {grid}"
    torch.manual_seed(0)
    vit = ViT(mixer=mixer_factory("lightnet", **mixer["init_args"]), patch=4, d_model=32, depth=1)
    logits = vit(torch.randn(2, 1, 28, 28))
    torch.nn.functional.cross_entropy(logits, torch.tensor([3, 7])).backward()
    assert logits.shape == (2, 10)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vit.parameters())


def test_triton_form_equals_naive_through_the_interpreter(assert_rel_close):
    """GLA's Triton kernel under LightNet's frontend (TRITON_INTERPRET=1 on the CPU, conftest): MD-LRPE keys,
    a state carried from a prefix, outputs and every gradient."""
    results = {}
    for impl in ("naive", "triton"):
        torch.manual_seed(0)
        mixer = build_mixer("lightnet", 16, n_heads=2, positional="md_lrpe", grid_width=3, chunk_size=16, impl=impl)
        x = torch.randn(1, 21, 16, generator=torch.Generator().manual_seed(1)).requires_grad_()
        _, state = mixer(x[:, :4], return_state=True)
        y = mixer(x[:, 4:], state=state)
        y.square().sum().backward()
        results[impl] = (y.detach(), {"x": x.grad, **{n: p.grad for n, p in mixer.named_parameters()}})
    (y_ref, g_ref), (y, g) = results["naive"], results["triton"]
    assert_rel_close(y, y_ref, 1e-5, "triton vs naive output")
    for name in g_ref:
        assert_rel_close(g[name], g_ref[name], 1e-5, f"triton vs naive grad {name}")
