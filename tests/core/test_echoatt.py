"""EchoAtt: attention sharing in MixerStack (share_attention) and its distillation loss."""

import pytest
import torch

from seqmix.core.blocks import MixerStack, mixer_factory
from seqmix.core.distill import echo_distill_loss
from seqmix.core.layers import merge_heads, split_heads
from seqmix.core.mixers.softmax import SoftmaxAttention

D, H = 16, 2


def shared_stack(*, causal: bool = True, share: dict[int, int] | None = None, n_layers: int = 4,
                 **mixer_args) -> MixerStack:
    torch.manual_seed(0)
    share = {2: 1, 3: 1} if share is None else share
    return MixerStack(D, n_layers, mixer_factory("softmax", n_heads=H, causal=causal, **mixer_args), causal=causal,
                      share_attention=share, mlp_ratio=2.0).eval()


def capture_probs(stack: MixerStack) -> dict[int, list[torch.Tensor]]:
    """Every block mixer's ``forward_echo``, wrapped: the probabilities it returned (sources) or received."""
    seen: dict[int, list[torch.Tensor]] = {}
    for i, block in enumerate(stack.blocks):
        original = block.mixer.forward_echo

        def wrapped(x, *, probs=None, original=original, i=i, **rest):
            y, p, state = original(x, probs=probs, **rest)
            seen.setdefault(i, []).append(p)
            return y, p, state

        block.mixer.forward_echo = wrapped
    return seen


def test_shared_layers_receive_the_source_probabilities_and_own_no_queries_or_keys():
    stack = shared_stack()
    seen = capture_probs(stack)
    with torch.no_grad():
        stack(torch.randn(2, 11, D))
    assert sorted(seen) == [1, 2, 3]  # layer 0 neither shares nor is shared: its plain forward
    assert seen[2][0] is seen[1][0] and seen[3][0] is seen[1][0]
    assert seen[1][0].shape == (2, H, 11, 11)
    torch.testing.assert_close(seen[1][0].sum(-1), torch.ones(2, H, 11))
    for i, block in enumerate(stack.blocks):
        assert (block.mixer.qkv.q is None) == (i in (2, 3)) and (block.mixer.qkv.k is None) == (i in (2, 3))
    unshared = MixerStack(D, 4, mixer_factory("softmax", n_heads=H), causal=True, mlp_ratio=2.0)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(unshared) - n(stack) == 2 * 2 * D * D  # two shared layers, each without W_q and W_k


def test_shared_output_equals_a_reference_from_the_source_probs_and_own_values(assert_rel_close):
    stack = shared_stack(share={1: 0}, n_layers=2)
    x = torch.randn(2, 9, D)
    seen = capture_probs(stack)
    with torch.no_grad():
        y, hidden = stack.hidden_states(x)
        src, shr = stack.blocks[0], stack.blocks[1]
        # by hand: layer 0 is plain softmax attention; layer 1 applies layer 0's P to its own V, then W_o
        h0 = x + src.mixer(src.norm_mix(x))
        h0 = h0 + src.mlp(src.norm_mlp(h0))
        q, k = (split_heads(f(src.norm_mix(x)), H) for f in (src.mixer.qkv.q, src.mixer.qkv.k))  # [B, H, T, K]
        scores = q @ k.transpose(-1, -2) / (D // H) ** 0.5  # [B, H, T, T]
        p = scores.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        v = split_heads(shr.mixer.qkv.v(shr.norm_mix(h0)), H)  # [B, T, D] -> [B, H, T, V]
        h1 = h0 + shr.mixer.out(merge_heads(p @ v))  # [B, H, T, V] -> [B, T, D]
        h1 = h1 + shr.mlp(shr.norm_mlp(h1))
        y_ref = stack.norm(h1)
    assert_rel_close(seen[0][0], p, 1e-5, "source probabilities")
    assert_rel_close(hidden[0], h0, 1e-5, "layer 0")
    assert_rel_close(hidden[1], h1, 1e-5, "shared layer 1")
    assert_rel_close(y, y_ref, 1e-5, "stack output")


def test_sharing_keeps_causality_and_the_key_mask():
    stack = shared_stack()
    x = torch.randn(2, 12, D)
    with torch.no_grad():
        y = stack(x)
        x2 = x.clone()
        x2[:, 7:] += 5.0
        torch.testing.assert_close(stack(x2)[:, :7], y[:, :7])
        assert not torch.allclose(stack(x2)[:, 7:], y[:, 7:])
        encoder = shared_stack(causal=False)
        mask = torch.ones(2, 12, dtype=torch.bool)
        mask[1, 8:] = False
        x3 = x.clone()
        x3[1, 8:] = 50.0
        torch.testing.assert_close(encoder(x3, mask=mask)[1, :8], encoder(x, mask=mask)[1, :8])


@pytest.mark.parametrize("mixer_args", [{}, {"rotary": True, "window": 4}])
def test_step_equals_forward_for_a_shared_causal_stack(assert_rel_close, mixer_args):
    stack = shared_stack(**mixer_args)
    x = torch.randn(2, 10, D)
    with torch.no_grad():
        y = stack(x)
        y_prompt, states = stack(x[:, :4], return_state=True)
        assert states[2].keys.shape[-1] == 0 and states[2].values.shape[-2] == 4  # values only
        assert states[1].keys.shape[-1] == D // H
        outs = [y_prompt]
        for t in range(4, 10):
            y_t, states = stack.step(x[:, t], states)
            outs.append(y_t[:, None])
        assert_rel_close(torch.cat(outs, 1), y, 1e-5, "prefill then step")
        states = stack.init_states(2)
        outs = []
        for t in range(10):
            y_t, states = stack.step(x[:, t], states)
            outs.append(y_t[:, None])
        assert_rel_close(torch.cat(outs, 1), y, 1e-5, "step from init_states")
    assert stack.blocks[2].mixer.state_size(10) * 2 == stack.blocks[1].mixer.state_size(10)


def test_a_shared_decoder_steps_like_its_forward(assert_rel_close):
    """Sharing touches the self mixers only: a decoder's cross mixers keep their context."""
    torch.manual_seed(0)
    stack = MixerStack(D, 3, mixer_factory("softmax", n_heads=H), causal=True, share_attention={2: 0},
                       cross_mixer=mixer_factory("softmax", n_heads=H, causal=False), mlp_ratio=2.0).eval()
    x, ctx = torch.randn(2, 6, D), torch.randn(2, 5, D)
    with torch.no_grad():
        y = stack(x, context=ctx)
        states, outs = stack.init_states(2, context=ctx), []
        for t in range(6):
            y_t, states = stack.step(x[:, t], states)
            outs.append(y_t[:, None])
    assert_rel_close(torch.cat(outs, 1), y, 1e-5, "decoder steps")


@pytest.mark.parametrize("share, message", [
    ({0: 0}, "layer 0 has no earlier layer"),
    ({4: 1}, "n_layers=4"),
    ({2: 2}, "choose a source in 0..1"),
    ({3: 2, 2: 1}, "set share_attention\\[3\\]=1"),
    ({2: -1}, "share_attention\\[2\\] must be an int >= 0"),
    ([2, 1], "must be a dict"),
])
def test_bad_share_attention_fails_at_construction(share, message):
    with pytest.raises(ValueError, match=message):
        MixerStack(D, 4, mixer_factory("softmax", n_heads=H), causal=True, share_attention=share)


def test_share_attention_needs_softmax_attention():
    with pytest.raises(ValueError, match="layer 1 has a GatedLinearAttention mixer.*SoftmaxAttention"):
        MixerStack(D, 3, mixer_factory("gla", n_heads=H), causal=True, share_attention={1: 0})
    with pytest.raises(ValueError, match="no q/k projections"):
        shared_stack().blocks[2].mixer(torch.randn(1, 3, D))  # a shared mixer alone has no probabilities


def test_distill_loss_is_zero_for_the_teacher_and_trains_only_the_student():
    torch.manual_seed(0)
    logits, hidden = torch.randn(5, 7), [torch.randn(2, 3, D) for _ in range(2)]
    same = echo_distill_loss(logits, logits.clone(), hidden, [h.clone() for h in hidden])
    assert float(same.total) == pytest.approx(0.0, abs=1e-6)
    student_logits = logits.clone().requires_grad_()
    student_hidden = [(h + 0.1).requires_grad_() for h in hidden]
    teacher_logits = (logits + torch.randn(5, 7)).requires_grad_()
    teacher_hidden = [h.clone().requires_grad_() for h in hidden]
    out = echo_distill_loss(student_logits, teacher_logits, student_hidden, teacher_hidden, temperature=2.0)
    kl, mse, total = (float(t.detach()) for t in (out.logits_kl, out.hidden_mse, out.total))
    assert kl > 0 and mse == pytest.approx(0.01, rel=1e-4) and total == pytest.approx(kl + mse, rel=1e-5)
    out.total.backward()
    assert student_logits.grad.abs().sum() > 0 and all(h.grad.abs().sum() > 0 for h in student_hidden)
    assert teacher_logits.grad is None and all(h.grad is None for h in teacher_hidden)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        echo_distill_loss(logits, logits, temperature=0.0)
    with pytest.raises(ValueError, match="teacher's n_layers"):
        echo_distill_loss(logits, logits, hidden, hidden[:1])


def test_shared_stack_is_a_plain_softmax_stack_without_sharing():
    """share_attention=None (the default) leaves every layer a full SoftmaxAttention with its fused path."""
    stack = MixerStack(D, 2, mixer_factory("softmax", n_heads=H), causal=True)
    assert stack.share_attention == {} and all(isinstance(b.mixer, SoftmaxAttention) and not b.mixer.shares_attention
                                               for b in stack.blocks)
