"""Head-wise LSTM / GRU / sLSTM: the fused loop (``chunk``) against the step-by-step reference,
outputs, final states and every gradient; the references against PyTorch's own LSTM / GRU
and against the unstabilised sLSTM; pieces; clear errors."""

import pytest
import torch

from seqmix.core import build_mixer
from seqmix.core.blocks import MixerStack, mixer_factory
from seqmix.kernels.rnn import (
    N_GATES,
    N_STATES,
    gru_headwise,
    lstm_headwise,
    slstm_headwise,
    zero_state,
)

RATIO = 1e-5  # relative RMS error allowed between chunk and naive in fp32
OPS = {"lstm": lstm_headwise, "gru": gru_headwise, "slstm": slstm_headwise}


def make_inputs(cell, b, t, h, k, *, with_state, seed=0, dtype=torch.float32, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    g = N_GATES[cell]
    gates_x = (torch.randn(b, t, h, g, k, generator=gen, dtype=dtype) * scale).requires_grad_()
    R = (torch.randn(h, k, g, k, generator=gen, dtype=dtype) / k ** 0.5).requires_grad_()
    extra = [torch.randn(h, k, generator=gen, dtype=dtype).requires_grad_()] if cell == "gru" else []
    state = None
    if with_state:
        state = [torch.randn(b, h, k, generator=gen, dtype=dtype) for _ in range(N_STATES[cell])]
        if cell == "slstm":  # a reachable sLSTM state: n >= 1, |c| <= n
            state[2] = state[2].abs() + 1
            state[1] = state[1].clamp(-1, 1) * state[2]
        state = tuple(s.requires_grad_() for s in state)
    return gates_x, R, extra, state


def outputs_and_grads(cell, impl, gates_x, R, extra, state, *, output_final_state):
    y, final = OPS[cell](gates_x, R, *extra, initial_state=state, output_final_state=output_final_state, impl=impl)
    gen = torch.Generator().manual_seed(123)
    loss = (y * torch.randn(y.shape, generator=gen, dtype=y.dtype)).sum()
    if output_final_state:
        assert len(final) == N_STATES[cell]
        loss = loss + sum((s * torch.randn(s.shape, generator=gen, dtype=s.dtype)).sum() for s in final)
    else:
        assert final is None, "output_final_state=False must return None as the final state"
    inputs = [gates_x, R, *extra, *(state or ())]
    grads = torch.autograd.grad(loss, inputs)
    return [y.detach(), *(s.detach() for s in (final or ())), *grads]


@pytest.mark.parametrize("cell", ["lstm", "gru", "slstm"])
@pytest.mark.parametrize("t", [1, 63, 130])
@pytest.mark.parametrize("with_state,output_final_state", [(False, False), (True, True)])
def test_rnn_chunk_matches_naive(cell, t, with_state, output_final_state, assert_rel_close):
    inputs = make_inputs(cell, 2, t, 3, 8, with_state=with_state)
    expected = outputs_and_grads(cell, "naive", *inputs, output_final_state=output_final_state)
    actual = outputs_and_grads(cell, "chunk", *inputs, output_final_state=output_final_state)
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_rel_close(a, e, RATIO, f"{cell} T={t} state={with_state} result {i}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_headwise_equals_torch_rnn_per_head(cell, impl, assert_rel_close):
    """H heads = H independent torch.nn.LSTM / GRU on the head slices (same gate order)."""
    b, t, h, k, d_in = 2, 17, 3, 4, 5
    torch.manual_seed(0)
    nets = [(torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(d_in, k, batch_first=True) for _ in range(h)]
    x = torch.randn(b, t, d_in)
    h0 = torch.randn(b, h, k)
    c0 = torch.randn(b, h, k)
    g = N_GATES[cell]
    gates_x, R, bias_n = [], [], []
    for net in nets:
        gx = x @ net.weight_ih_l0.T + net.bias_ih_l0  # [B, T, G*K]
        if cell == "lstm":
            gx = gx + net.bias_hh_l0
        else:  # r and z take both biases; n's recurrent bias sits inside r * (...)
            gx = gx + torch.cat((net.bias_hh_l0[: 2 * k], torch.zeros(k)))
            bias_n.append(net.bias_hh_l0[2 * k:])
        gates_x.append(gx.view(b, t, g, k))  # [B, T, G*K] -> [B, T, G, K]
        R.append(net.weight_hh_l0.T.reshape(k, g, k))  # [G*K, K]^T -> [K, G, K]
    gates_x = torch.stack(gates_x, 2)  # [B, T, H, G, K]
    R = torch.stack(R)  # [H, K, G, K]
    extra = [torch.stack(bias_n)] if cell == "gru" else []
    state = (h0, c0) if cell == "lstm" else (h0,)
    y, final = OPS[cell](gates_x.detach(), R.detach(), *(e.detach() for e in extra), initial_state=state,
                         output_final_state=True, impl=impl)
    for head, net in enumerate(nets):
        init = (h0[None, :, head].contiguous(), c0[None, :, head].contiguous()) if cell == "lstm" \
            else h0[None, :, head].contiguous()
        with torch.no_grad():
            expected, expected_state = net(x, init)
        assert_rel_close(y[:, :, head], expected, 1e-5, f"{cell} {impl} head {head} output")
        expected_h = expected_state[0] if cell == "lstm" else expected_state
        assert_rel_close(final[0][:, head], expected_h[0], 1e-5, f"{cell} {impl} head {head} final h")
        if cell == "lstm":
            assert_rel_close(final[1][:, head], expected_state[1][0], 1e-5, f"lstm {impl} head {head} final c")


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_slstm_equals_unstabilised_definition(impl, assert_rel_close):
    """With moderate pre-activations the stabiliser m must not change h: compare with
    c_t = sigmoid(f) c + exp(i) z, n_t = sigmoid(f) n + exp(i), h = o c / n (fp64)."""
    gates_x, R, _, _ = make_inputs("slstm", 2, 40, 2, 4, with_state=False, dtype=torch.float64)
    gates_x, R = gates_x.detach(), R.detach()
    b, t, h, _, k = gates_x.shape
    hid, c, n = (torch.zeros(b, h, k, dtype=torch.float64) for _ in range(3))
    expected = []
    for step in range(t):
        a_i, a_f, a_z, a_o = (gates_x[:, step] + torch.einsum("bhd,hdge->bhge", hid, R)).unbind(2)
        c = torch.sigmoid(a_f) * c + torch.exp(a_i) * torch.tanh(a_z)
        n = torch.sigmoid(a_f) * n + torch.exp(a_i)
        hid = torch.sigmoid(a_o) * c / n
        expected.append(hid)
    y, _ = slstm_headwise(gates_x, R, impl=impl)
    assert_rel_close(y, torch.stack(expected, 1), 1e-10, f"slstm {impl} vs the unstabilised sLSTM")


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_slstm_large_preactivations_stay_finite(impl):
    gates_x, R, _, _ = make_inputs("slstm", 1, 50, 2, 4, with_state=False, scale=300.0)
    y, (h, c, n, m) = slstm_headwise(gates_x, R, output_final_state=True, impl=impl)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(gates_x.grad).all() and torch.isfinite(R.grad).all()
    assert (n >= 1 - 1e-6).all(), "the stabilised normaliser n_t is >= 1 from the first step on"


@pytest.mark.parametrize("cell", ["lstm", "gru", "slstm"])
def test_rnn_two_pieces_equal_whole(cell, assert_rel_close):
    gates_x, R, extra, _ = make_inputs(cell, 2, 50, 2, 4, with_state=False)
    gates_x, R, extra = gates_x.detach(), R.detach(), [e.detach() for e in extra]
    op = OPS[cell]
    y, final = op(gates_x, R, *extra, output_final_state=True)
    y1, s1 = op(gates_x[:, :21], R, *extra, output_final_state=True)
    y2, s2 = op(gates_x[:, 21:], R, *extra, initial_state=s1, output_final_state=True)
    assert_rel_close(torch.cat((y1, y2), 1), y, 1e-6, f"{cell} two pieces")
    for a, e in zip(s2, final):
        assert_rel_close(a, e, 1e-6, f"{cell} final state after two pieces")
    zero = zero_state(cell, 2, 2, 4)
    assert_rel_close(op(gates_x, R, *extra, initial_state=zero)[0], y, 0.0, f"{cell} explicit zero state")


def test_rnn_errors_name_the_problem():
    gates_x, R, _, _ = make_inputs("lstm", 2, 5, 2, 4, with_state=False)
    with pytest.raises(ValueError, match=r"gates_x must be \[batch, time, heads, 4 gates, head_dim\]"):
        lstm_headwise(gates_x[..., :3, :], R)
    with pytest.raises(ValueError, match=r"R must be \[heads=2, head_dim=4, gates=4, head_dim=4\]"):
        lstm_headwise(gates_x, R[:, :3])
    with pytest.raises(ValueError, match=r"initial_state must be a tuple \(h, c\)"):
        lstm_headwise(gates_x, R, initial_state=(torch.zeros(2, 2, 4),))
    with pytest.raises(ValueError, match=r"bias_n .* must be \[H=2, K=4\]"):
        gru_headwise(torch.zeros(2, 5, 2, 3, 4), torch.zeros(2, 4, 3, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="impl='fast' is unknown"):
        lstm_headwise(gates_x, R, impl="fast")


def test_rnn_triton_on_cpu_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    gates_x, R, _, _ = make_inputs("lstm", 1, 3, 1, 4, with_state=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        lstm_headwise(gates_x, R, impl="triton")


def test_bidirectional_rnn_mixer_sees_both_sides():
    torch.manual_seed(0)
    mixer = build_mixer("lstm", 16, n_heads=2, causal=False)
    assert mixer.bidirectional, "a non-causal RNN mixer is bidirectional by default"
    x = torch.randn(1, 20, 16)
    x2 = x.clone()
    x2[:, -1] += 1.0
    with torch.no_grad():
        assert (mixer(x)[:, 0] - mixer(x2)[:, 0]).abs().max() > 1e-6, "the first output must see the last token"
    with pytest.raises(ValueError, match="carried state needs causal=True"):
        mixer(x, return_state=True)
    with pytest.raises(ValueError, match="bidirectional=True reads the future"):
        build_mixer("gru", 16, n_heads=2, causal=True, bidirectional=True)


@pytest.mark.parametrize("cell", ["lstm", "gru", "slstm"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_masked_rnn_skips_masked_tokens(cell, bidirectional, assert_rel_close):
    """With a mask, each row's output at its kept tokens equals the RNN run on those tokens alone
    (right padding, left padding and a gap alike), outputs and input gradients; masked positions
    output zeros and get no gradient."""
    torch.manual_seed(0)
    mixer = build_mixer(cell, 8, n_heads=2, causal=not bidirectional, bidirectional=bidirectional).double()
    t = 9
    mask = torch.ones(3, t, dtype=torch.bool)
    mask[0, 6:] = False  # right-padded
    mask[1, :4] = False  # left-padded
    mask[2, [2, 5]] = False  # gaps
    x = torch.randn(3, t, 8, dtype=torch.float64, requires_grad=True)
    y = mixer(x, mask=mask)
    (y * torch.linspace(-1, 1, t, dtype=torch.float64)[None, :, None]).sum().backward()
    assert y[~mask].abs().max() == 0 and x.grad[~mask].abs().max() == 0
    for row in range(3):
        alone = x[row, mask[row]].detach()[None].requires_grad_()  # [1, kept, 8]
        y_alone = mixer(alone)
        weights = torch.linspace(-1, 1, t, dtype=torch.float64)[mask[row]][None, :, None]
        (y_alone * weights).sum().backward()
        assert_rel_close(y[row, mask[row]].detach(), y_alone[0].detach(), 1e-12)
        assert_rel_close(x.grad[row, mask[row]], alone.grad[0], 1e-12)


def test_masked_rnn_errors_name_the_problem():
    mixer = build_mixer("lstm", 8, n_heads=2, causal=True)
    x, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="mask cannot be combined with a carried state"):
        mixer(x, mask=mask, return_state=True)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor \[batch=2, keys=5\]"):
        mixer(x, mask=mask[:, :4])


def test_stacked_lstm_encoder_carries_states(assert_rel_close):
    """A stacked unidirectional LSTM (a seq2seq encoder) returns per-layer (h, c) states and
    steps token by token to the same outputs."""
    torch.manual_seed(0)
    stack = MixerStack(16, 2, mixer_factory("lstm", n_heads=2), causal=True).eval()
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        y, states = stack(x, return_state=True)
        assert len(states) == 2 and all(len(s) == 2 and s[0].shape == (2, 2, 8) for s in states)
        step_states = stack.init_states(2)
        steps = []
        for t in range(12):
            y_t, step_states = stack.step(x[:, t], step_states)
            steps.append(y_t)
    assert_rel_close(torch.stack(steps, 1), y, 1e-5, "stacked LSTM step by step")
    for (h, c), (h2, c2) in zip(states, step_states):
        assert_rel_close(h2, h, 1e-5, "final h")
        assert_rel_close(c2, c, 1e-5, "final c")
