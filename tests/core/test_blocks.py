import pytest
import torch

from seqmix.core.blocks import ChannelMixer, DecoderBlockState, GRUGate, MixerBlock, MixerStack, mixer_factory
from seqmix.core.embeddings import RotaryEmbedding, SinusoidalPositionalEncoding, sinusoidal_table
from seqmix.core import build_mixer


def test_encoder_stack_shapes_and_mask():
    torch.manual_seed(0)
    stack = MixerStack(32, 2, mixer_factory("softmax", n_heads=4, causal=False), causal=False)
    x = torch.randn(2, 9, 32)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    y = stack(x, mask=mask)
    assert y.shape == x.shape
    # padded keys do not influence the unpadded sequence
    x2 = x.clone()
    x2[1, 6:] = 100.0
    y2 = stack(x2, mask=mask)
    torch.testing.assert_close(y[1, :6], y2[1, :6])


def test_decoder_stack_uses_context():
    torch.manual_seed(0)
    stack = MixerStack(32, 2, mixer_factory("softmax", n_heads=4), causal=True,
                       cross_mixer=mixer_factory("softmax", n_heads=4, causal=False))
    x, ctx = torch.randn(2, 7, 32), torch.randn(2, 11, 32)
    y = stack(x, context=ctx)
    assert y.shape == x.shape
    assert not torch.allclose(y, stack(x, context=ctx + 1))
    with pytest.raises(ValueError, match="pass context"):
        stack(x)


def test_decoder_stack_steps_layer_by_layer_like_its_forward(assert_rel_close):
    """Prefill with one forward (the context projected once, kept in each block's state), then step."""
    torch.manual_seed(0)
    stack = MixerStack(32, 2, mixer_factory("softmax", n_heads=4, rotary=True), causal=True,
                       cross_mixer=mixer_factory("softmax", n_heads=4, causal=False)).eval()
    x, ctx = torch.randn(2, 9, 32), torch.randn(2, 11, 32)
    ctx_mask = torch.ones(2, 11, dtype=torch.bool)
    ctx_mask[0, 7:] = False
    with torch.no_grad():
        y = stack(x, context=ctx, context_mask=ctx_mask)
        y_prompt, states = stack(x[:, :4], context=ctx, context_mask=ctx_mask, return_state=True)
        assert all(isinstance(s, DecoderBlockState) for s in states)
        steps = [y_prompt]
        for t in range(4, 9):
            y_t, states = stack.step(x[:, t], states)
            steps.append(y_t[:, None])
        assert_rel_close(torch.cat(steps, 1), y, 1e-5, "prefill then step")
        fresh = stack.init_states(2, context=ctx, context_mask=ctx_mask)
        assert_rel_close(stack.step(x[:, 0], fresh)[0], y[:, 0], 1e-5, "first step from init_states")
    with pytest.raises(ValueError, match="already holds the context"):
        stack(x, context=ctx, states=states)
    with pytest.raises(ValueError, match="pass context=\\[B, S, D\\] to init_state"):
        stack.init_states(2)
    with pytest.raises(ValueError, match="a decoder block's state is a DecoderBlockState"):
        stack.step(x[:, 0], [s.mixer for s in states])  # the self mixers' KV caches alone
    with pytest.raises(ValueError, match="step needs the state of init_state\\(context=...\\)"):
        stack.step(x[:, 0], [None, None])


def test_stack_rejects_wrong_causality():
    with pytest.raises(ValueError, match="needs causal=True mixers.*set causal: true"):
        MixerStack(16, 1, mixer_factory("softmax", n_heads=2, causal=False), causal=True)


def test_block_rejects_mismatched_width():
    with pytest.raises(ValueError, match="d_model=16 but the block has d_model=32"):
        MixerBlock(32, build_mixer("softmax", 16, n_heads=2))


def test_gru_gate_starts_near_identity_and_trains():
    torch.manual_seed(0)
    gate = GRUGate(16)
    x, y = torch.randn(4, 16), torch.randn(4, 16)
    out = gate(x, y)
    assert (out - x).abs().mean() < 0.5 * (y - x).abs().mean()  # z ~ sigmoid(-2): mostly the stream
    out.sum().backward()
    assert all(p.grad is not None for p in gate.parameters())


def test_gated_block_runs():
    block = MixerBlock(16, build_mixer("softmax", 16, n_heads=2), gating="gru")
    assert block(torch.randn(2, 5, 16)).shape == (2, 5, 16)
    with pytest.raises(ValueError, match="gating='highway' is unknown"):
        MixerBlock(16, build_mixer("softmax", 16, n_heads=2), gating="highway")


@pytest.mark.parametrize("kind", ["mlp", "glu"])
def test_channel_mixer(kind):
    assert ChannelMixer(16, kind=kind)(torch.randn(3, 4, 16)).shape == (3, 4, 16)


def test_sinusoidal_table_values():
    table = sinusoidal_table(4, 6)
    assert torch.allclose(table[:, 0], torch.sin(torch.arange(4.0)))
    assert torch.allclose(table[:, 1], torch.cos(torch.arange(4.0)))
    enc = SinusoidalPositionalEncoding(6, max_len=4)
    with pytest.raises(ValueError, match="exceeds max_len=4"):
        enc(torch.zeros(1, 5, 6))


def test_rotary_is_relative():
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    s1 = (rope(q, offset=5) * rope(k, offset=2)).sum()
    s2 = (rope(q, offset=13) * rope(k, offset=10)).sum()
    torch.testing.assert_close(s1, s2)


@pytest.mark.parametrize("mixer_name", ["softmax", "sliding_window", "relu_attention", "sigmoid_attention"])
def test_an_attention_mixer_with_rotary_true_applies_positions(mixer_name):
    """Without positions non-causal attention is permutation-equivariant; rotary=True must break that (a
    class-level ``rotary = None`` once shadowed the submodule and every attention mixer ran without positions)."""
    from seqmix.core import build_mixer

    torch.manual_seed(0)
    extra = {"window": 64} if mixer_name == "sliding_window" else {}
    plain = build_mixer(mixer_name, 16, n_heads=2, causal=False, **extra)
    rotated = build_mixer(mixer_name, 16, n_heads=2, causal=False, rotary=True, **extra)
    rotated.load_state_dict(plain.state_dict(), strict=False)  # same projections; rotary has no weights
    assert isinstance(rotated.rotary, torch.nn.Module) and plain.rotary is None
    x, order = torch.randn(1, 9, 16), torch.randperm(9)
    torch.testing.assert_close(plain(x)[:, order], plain(x[:, order]))
    assert not torch.allclose(rotated(x)[:, order], rotated(x[:, order]), atol=1e-4)
