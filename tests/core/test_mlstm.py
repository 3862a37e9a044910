"""mLSTM's mechanism: the stabilised recurrence (both forms) equals the paper's unstabilised definition
where that one does not overflow, and stays finite where it does; the cell mixer is eqs. 19-27; the
block layout's state and the constructor's errors. (Shapes, causality, pieces, step = forward and
chunk = naive at the mixer level: the generic tests, through ``MLSTM.test_configs``.)"""

import pytest
import torch
import torch.nn.functional as F

from seqmix.core import build_mixer
from seqmix.core.mixers.mlstm import MLSTMBlockState
from seqmix.kernels.mlstm import MLSTMState, chunk_mlstm


def unstabilised(q, k, v, log_i, log_f, floor=1.0):
    """The paper's eqs. 19-21 as written: plain exponential gates, no stabiliser (overflows for large gates);
    ``floor`` is the 1 of ``max(|q . n|, 1)``."""
    b, t, h, dk = q.shape
    C, n = q.new_zeros(b, h, dk, v.shape[-1]), q.new_zeros(b, h, dk)
    k = k * dk ** -0.5
    outputs = []
    for s in range(t):
        i, f = log_i[:, s].exp()[..., None], log_f[:, s].exp()[..., None]  # [B, H, 1]
        C = f[..., None] * C + i[..., None] * k[:, s, :, :, None] * v[:, s, :, None, :]  # [B, H, K, V]
        n = f * n + i * k[:, s]  # [B, H, K]
        numerator = torch.einsum("bhk,bhkv->bhv", q[:, s], C)
        outputs.append(numerator / (q[:, s] * n).sum(-1).abs().clamp_min(floor)[..., None])
    return torch.stack(outputs, 1)  # [B, T, H, V]


def gates_inputs(t, forget, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, t, 2, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    log_i = 2.0 * torch.randn(2, t, 2, generator=gen, dtype=torch.float64)  # i_t from e^-6 to e^6
    f_pre = torch.randn(2, t, 2, generator=gen, dtype=torch.float64)
    log_f = F.logsigmoid(f_pre + 2.0) if forget == "sigmoid" else 0.1 * f_pre  # exp: f_t around 1, some above
    return q, k, v, log_i, log_f


@pytest.mark.parametrize("forget", ["sigmoid", "exp"])
@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_stabilised_equals_unstabilised(forget, impl, assert_rel_close):
    """float64, moderate gates: the max-stabilised recurrence is the definition, not an approximation."""
    inputs = gates_inputs(45, forget)
    expected = unstabilised(*inputs)
    assert torch.isfinite(expected).all()
    h, _ = chunk_mlstm(*inputs, chunk_size=16, impl=impl)
    assert_rel_close(h, expected, 1e-12, f"{forget} forget gate, impl={impl}")


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_stabiliser_survives_what_overflows(impl, assert_rel_close):
    """Input gates e^(1000 + ...) overflow the definition (inf / inf); the stabilised forms are finite and
    equal its limit: with every |q . n| >> 1 the max picks it, so h = q C / |q . n|, the same as for
    the gates without the 1000 (a common factor of C and n)."""
    q, k, v, log_i, log_f = gates_inputs(30, "sigmoid")
    assert not torch.isfinite(unstabilised(q, k, v, log_i + 1000.0, log_f)).all()
    h, _ = chunk_mlstm(q, k, v, log_i + 1000.0, log_f, chunk_size=8, impl=impl)
    limit = unstabilised(q, k, v, log_i, log_f, floor=0.0)
    assert_rel_close(h, limit, 1e-10, f"impl={impl} at gates + 1000")
    definition = unstabilised(q, k, v, log_i, log_f)
    assert (limit - definition).abs().max() > 1e-3, "the limit must differ from the definition at the original gates"


def test_cell_mixer_is_the_papers_equations(assert_rel_close):
    """The cell layout: q, k, v, i~, f~, o from x (eqs. 22-27), the memory of eqs. 19-21, the output projection."""
    torch.manual_seed(0)
    mixer = build_mixer("mlstm", 16, n_heads=2, chunk_size=8).double()
    x = torch.randn(2, 21, 16, dtype=torch.float64)
    with torch.no_grad():
        expected = cell_equations(mixer, x)
    for impl in ("naive", "chunk"):
        mixer.impl = impl
        with torch.no_grad():
            assert_rel_close(mixer(x), expected, 1e-12, f"impl={impl}")


def cell_equations(mixer, x):
    q, k, v = mixer.qkv(x).view(2, 21, 3, 2, 8).unbind(2)  # [B, T, 3, H, K] -> [B, T, H, K] x3
    log_i, f_pre = mixer.gates(x).view(2, 21, 2, 2).unbind(2)  # [B, T, 2, H] -> [B, T, H] x2
    h = unstabilised(q, k, v, log_i, F.logsigmoid(f_pre)).reshape(2, 21, 16)  # [B, T, H, V] -> [B, T, D]
    return mixer.out(torch.sigmoid(mixer.out_gate(x)) * h)


def test_forget_gates_start_slow_for_both_kinds():
    """As in xLSTM: forget gates open from sigmoid(3) to sigmoid(6) over the heads, for either gate kind."""
    for forget in ("sigmoid", "exp"):
        mixer = build_mixer("mlstm", 16, n_heads=4, forget_gate=forget)
        f_bias = mixer.gates.bias[4:].detach()
        log_f = F.logsigmoid(f_bias) if forget == "sigmoid" else f_bias
        expected = torch.sigmoid(torch.linspace(3.0, 6.0, 4))
        assert torch.allclose(log_f.exp(), expected, rtol=1e-6, atol=0), f"{forget}: {log_f.exp()} != {expected}"


def test_states():
    """The cell carries MLSTMState (C [B, H, K, V], n [B, H, K], m [B, H]); the block adds its convolution's
    cache; both constant in size, counted by state_size."""
    cell = build_mixer("mlstm", 16, n_heads=2)
    state = cell.init_state(3)
    assert isinstance(state, MLSTMState) and [tuple(s.shape) for s in state] == [(3, 2, 8, 8), (3, 2, 8), (3, 2)]
    assert cell.state_size(10) == sum(s[0].numel() for s in state) == cell.state_size(10_000)
    block = build_mixer("mlstm", 16, n_heads=2, layout="block", proj_factor=2.0, conv_size=3)
    _, returned = block(torch.randn(3, 5, 16), return_state=True)
    assert isinstance(returned, MLSTMBlockState)
    assert [tuple(s.shape) for s in returned.memory] == [(3, 2, 16, 16), (3, 2, 16), (3, 2)]
    assert tuple(returned.conv.shape) == (3, 2, 32)
    assert block.state_size(5) == sum(s[0].numel() for s in (*returned.memory, returned.conv))
    with pytest.raises(ValueError, match=r"layout='block' carries an MLSTMBlockState\(memory, conv\), got MLSTMState"):
        block(torch.randn(3, 5, 16), state=cell.init_state(3))


@pytest.mark.parametrize("arguments,message", [
    ({"layout": "blocks"}, r"layout='blocks' is unknown; choose one of \('cell', 'block'\)"),
    ({"forget_gate": "tanh"}, r"forget_gate='tanh' is unknown; choose one of \('sigmoid', 'exp'\)"),
    ({"proj_factor": 2.0}, r"proj_factor=2.0 applies to layout='block' only; drop it or set layout='block'"),
    ({"conv_size": 4}, r"conv_size=4 applies to layout='block' only"),
    ({"layout": "block", "proj_factor": 0.0}, r"proj_factor must be a positive number"),
    ({"layout": "block", "proj_factor": 1.3}, r"inner width .* = 21 that n_heads=2 does not divide"),
    ({"layout": "block", "conv_size": 1}, r"conv_size must be an int >= 2"),
    ({"chunk_size": 0}, r"chunk_size must be a positive int"),
    ({"causal": False}, r"supports only \['causal_self'\]"),
])
def test_bad_arguments_are_clear_errors(arguments, message):
    with pytest.raises(ValueError, match=message):
        build_mixer("mlstm", 16, n_heads=2, **arguments)

