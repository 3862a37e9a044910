"""LightNet's MD-TPE (positional="md_tpe"): the FFT Toeplitz product equals the explicit matrix, the
encoding equals its dense definition on odd and partial grids (outputs and gradients), the mixer's
FFT form equals its naive form at odd lengths, and it is non-causal only, with clear errors."""

from __future__ import annotations

import pytest
import torch

from seqmix.core import build_mixer
from seqmix.core.mixers.lightnet import MDTPE, LightNet, toeplitz_fft, toeplitz_naive
from tests.core.mixer_checks import impl_outputs_and_grads

D = 6


@pytest.mark.parametrize("n", [1, 2, 7, 9])
@pytest.mark.parametrize("dim", [1, 2])
def test_toeplitz_fft_equals_the_explicit_matrix(n, dim):
    g = torch.Generator().manual_seed(n)
    shape = [2, 3, 3, D]
    shape[dim] = n
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(2 * n - 1, D, generator=g, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(shape, generator=g, dtype=torch.float64)
    results = []
    for fn in (toeplitz_naive, toeplitz_fft):
        y = fn(x, kernel, dim)
        gx, gk = torch.autograd.grad((y * cotangent).sum(), (x, kernel))
        results.append((y, gx, gk))
    for ref, fast in zip(*results):
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    # the matrix is Toeplitz: y_i = sum_j k[i - j] x_j, checked entry by entry on one channel
    xs = x.detach().movedim(dim, 1)[0, :, 0, 0]  # [n]
    expected = torch.stack([sum(kernel[i - j + n - 1, 0] * xs[j] for j in range(n)) for i in range(n)])
    torch.testing.assert_close(results[0][0].detach().movedim(dim, 1)[0, :, 0, 0], expected.detach())


def dense_md_tpe(tpe: MDTPE, x: torch.Tensor, width: int | None) -> torch.Tensor:
    """The definition on the raster-ordered tokens, no grid reshape: ``y_t = sum_s M[t, s] x_s`` with
    ``M[t, s] = [same column] K_rows[row_t - row_s] + [same row] K_cols[col_t - col_s]``."""
    t = x.shape[1]
    pos = torch.arange(t)
    if width is None:
        k = tpe.kernel(0, t, x.dtype)  # [2T - 1, D]
        matrix = k[pos[:, None] - pos[None, :] + t - 1]  # [T, T, D]
    else:
        row, col = pos // width, pos % width
        rows = int(row.max()) + 1
        k_rows, k_cols = tpe.kernel(0, rows, x.dtype), tpe.kernel(1, width, x.dtype)  # [2R - 1, D], [2W - 1, D]
        same_col = (col[:, None] == col[None, :])[..., None]  # [T, T, 1]
        same_row = (row[:, None] == row[None, :])[..., None]
        matrix = (same_col * k_rows[row[:, None] - row[None, :] + rows - 1]
                  + same_row * k_cols[col[:, None] - col[None, :] + width - 1])  # [T, T, D]
    return torch.einsum("tsd,bsd->btd", matrix, x)


@pytest.mark.parametrize("t, width", [(35, 5), (19, 5), (1, 7), (13, None), (9, 3)])
def test_md_tpe_is_its_dense_definition(t, width):
    """Odd grids (7 x 5, 3 x 3), a last row left partial (19 tokens on 5 columns: zero padding), one token,
    and one axis: both forms equal the dense sum over the grid, outputs and every gradient."""
    torch.manual_seed(0)
    tpe = MDTPE(D, 1 if width is None else 2, hidden=8, decay=0.9).double()
    for p in tpe.parameters():  # weights of order one: the kernel matters
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(2, t, D, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(2, t, D, dtype=torch.float64)
    results = []
    for run in (lambda: dense_md_tpe(tpe, x, width), lambda: tpe(x, width, "naive"), lambda: tpe(x, width, "fft")):
        y = run()
        grads = torch.autograd.grad((y * cotangent).sum(), (x, *tpe.parameters()))
        results.append((y, *grads))
    for form in results[1:]:
        for ref, got in zip(results[0], form):
            torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-11)
    assert results[0][0].abs().max() > 0.1  # not a vanishing encoding


def test_kernel_is_the_rpe_of_the_offset_times_the_decay():
    tpe = MDTPE(D, 2, hidden=4, decay=0.8)
    torch.nn.init.normal_(tpe.rpe[1][-1].weight)
    k = tpe.kernel(1, 4, torch.float32)  # offsets -3 .. 3
    r = torch.arange(-3.0, 4.0)[:, None]
    torch.testing.assert_close(k, tpe.rpe[1](r) * 0.8 ** r.abs())
    assert not torch.allclose(k[2], k[4])  # offsets -1 and +1 differ: the kernel is not forced symmetric


@pytest.mark.parametrize("t, dtype, ratio", [(1, torch.float64, 1e-9), (63, torch.float64, 1e-9),
                                             (200, torch.float64, 1e-9), (63, torch.float32, 1e-5),
                                             (200, torch.float32, 1e-5)])
def test_mixer_fft_form_equals_naive_outputs_and_all_gradients(t, dtype, ratio, assert_rel_close):
    """What the generic test does for the registered configs (md_tpe cannot be one: the generic tests build
    every config causal too), here for the non-causal pattern at odd lengths with partial last rows; T=1
    in float64 only (some of its gradients are zero in exact arithmetic: float32 leaves noise there)."""
    torch.manual_seed(0)
    mixer = build_mixer("lightnet", 32, n_heads=2, causal=False, positional="md_tpe", grid_width=7, chunk_size=16)
    mixer = mixer.to(dtype)
    for net in mixer.mdtpe.rpe:
        torch.nn.init.normal_(net[-1].weight, std=0.2)
    x = torch.randn(2, t, 32, dtype=dtype)
    results = impl_outputs_and_grads(mixer, x)
    (y_ref, g_ref), (y_fast, g_fast) = results["naive"], results["chunk"]
    assert_rel_close(y_fast, y_ref, ratio, f"T={t} output")
    assert g_fast.keys() == g_ref.keys() and "mdtpe.rpe.1.2.weight" in g_ref
    scale = max(g.norm() for g in g_ref.values())
    for name in g_ref:
        if t == 1 and name in ("mdtpe.rpe.1.0.weight", "q_proj.weight", "f_proj.weight"):
            # zero in exact arithmetic at one token: offset 0 alone meets a token (r W_1 = 0), the key is
            # softmax over one token (= 1) and o = (sum q) v * scale loses q's scale in the head norm
            assert max(g_ref[name].norm(), g_fast[name].norm()) < 1e-10 * scale, f"T=1 grad {name} is not ~0"
        else:
            assert_rel_close(g_fast[name], g_ref[name], ratio, f"T={t} grad {name}")


def test_mixer_is_finite_in_bf16_long_and_large():
    torch.manual_seed(0)
    mixer = LightNet(32, n_heads=2, causal=False, positional="md_tpe", grid_width=7)
    with torch.no_grad():
        y = mixer.to(torch.bfloat16)(torch.randn(2, 63, 32, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    mixer = LightNet(32, n_heads=2, causal=False, positional="md_tpe", grid_width=64)
    for t, scale in ((4096, 1.0), (200, 100.0)):
        x = (torch.randn(1, t, 32) * scale).requires_grad_()
        mixer(x).square().mean().backward()
        assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in mixer.parameters())
        mixer.zero_grad()


def test_md_tpe_sees_position_where_none_does_not():
    """Without an encoding the non-causal lightnet is order-free; MD-TPE makes a swap of two tokens matter."""
    torch.manual_seed(0)
    x = torch.randn(1, 49, 32)
    swap = torch.arange(49)
    swap[[3, 40]] = swap[[40, 3]]
    for positional, order_free in (("none", True), ("md_tpe", False)):
        mixer = build_mixer("lightnet", 32, n_heads=2, causal=False, positional=positional,
                            grid_width=7 if positional == "md_tpe" else None)
        y, y_swapped = mixer(x), mixer(x[:, swap])
        assert torch.allclose(y[:, swap], y_swapped, atol=1e-5) == order_free, positional


def test_md_tpe_errors_name_the_problem():
    with pytest.raises(ValueError, match="md_tpe' mixes every axis.*needs causal=False.*use positional='md_lrpe'"):
        LightNet(16, causal=True, positional="md_tpe", grid_width=4)
    with pytest.raises(ValueError, match="decay must be a number in \\(0, 1\\]"):
        LightNet(16, causal=False, positional="md_tpe", tpe_decay=1.5)
    with pytest.raises(ValueError, match="hidden must be an int >= 1"):
        LightNet(16, causal=False, positional="md_tpe", tpe_dim=0)
    mixer = LightNet(16, n_heads=2, causal=False, positional="md_tpe", grid_width=4)
    with pytest.raises(ValueError, match="step needs causal=True"):
        mixer.step(torch.randn(1, 16), None)
    with pytest.raises(ValueError, match="needs causal=True"):
        mixer(torch.randn(1, 8, 16), return_state=True)
