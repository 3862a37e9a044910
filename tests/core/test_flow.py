"""Flow attention (Flowformer): the mixer, in both forms, against a transcription of the paper's
own code (its Flow_Attention and Flow_Attention_Causal, in fp64, on the same features); the
linear form against the explicit quadratic flow formula, outputs and gradients; clear errors.
(The op's own tests, states and pieces: tests/kernels/test_flow_attention.py.)"""

import pytest
import torch

from seqmix.core import build_mixer
from seqmix.core.layers import merge_heads
from seqmix.kernels.flow import features


def flowformer_code(a, b, v, *, causal):
    """The paper's code (thuml/Flowformer) on features ``a = phi(q)``, ``b = phi(k)``: [B, H, T, K],
    ``v: [B, H, T, V]``, without its 1e-6 terms and its clamp of the conserved source flow."""
    t = a.shape[2]
    if not causal:
        sink_incoming = 1.0 / torch.einsum("nhld,nhd->nhl", a, b.sum(2))
        source_outgoing = 1.0 / torch.einsum("nhld,nhd->nhl", b, a.sum(2))
        conserved_sink = torch.einsum("nhld,nhd->nhl", a, (b * source_outgoing[..., None]).sum(2))
        conserved_source = torch.einsum("nhld,nhd->nhl", b, (a * sink_incoming[..., None]).sum(2))
        sink_allocation = torch.sigmoid(conserved_sink * (t / t))  # L / S
        source_competition = torch.softmax(conserved_source, dim=-1) * t
        kv = torch.einsum("nhld,nhlm->nhdm", b, v * source_competition[..., None])
        return torch.einsum("nhld,nhdm->nhlm", a * sink_incoming[..., None], kv) * sink_allocation[..., None]
    normal = torch.arange(1, t + 1, dtype=a.dtype)[None, None, :]
    sink_incoming = normal / torch.einsum("nhld,nhld->nhl", a, b.cumsum(2))
    source_outgoing = normal / torch.einsum("nhld,nhld->nhl", b, a.cumsum(2))
    conserved_sink = torch.einsum("nhld,nhld->nhl", a, (b * source_outgoing[..., None]).cumsum(2)) / normal
    conserved_source = torch.einsum("nhld,nhld->nhl", b, (a * sink_incoming[..., None]).cumsum(2)) / normal
    sink_allocation = torch.sigmoid(conserved_sink)
    conserved_source = torch.exp(conserved_source)
    source_competition = conserved_source / conserved_source.cumsum(-1) * normal
    kv = torch.einsum("nhld,nhlm->nhldm", b, v * source_competition[..., None]).cumsum(2)
    return torch.einsum("nhld,nhldm->nhlm", a * (sink_incoming / normal)[..., None], kv) * sink_allocation[..., None]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_flow_mixer_is_the_papers_flow_attention(causal, impl, assert_rel_close):
    torch.manual_seed(0)
    mixer = build_mixer("flow", 16, n_heads=2, causal=causal, impl=impl, chunk_size=8).double()
    x = torch.randn(2, 29, 16, dtype=torch.float64)
    with torch.no_grad():
        q, k, v = mixer.qkv(x).view(2, 29, 3, 2, 8).permute(2, 0, 3, 1, 4)  # [3, B, H, T, K]
        expected = mixer.out(merge_heads(flowformer_code(features(q), features(k), v, causal=causal)))
        assert_rel_close(mixer(x), expected, 1e-12, f"causal={causal} impl={impl}")


@pytest.mark.parametrize("causal", [True, False])
def test_flow_linear_form_equals_quadratic_formula(causal, assert_rel_close):
    """impl="chunk" (prefix sums) equals impl="naive" (the T x T flow matrix), outputs and every gradient."""
    torch.manual_seed(0)
    mixer = build_mixer("flow", 16, n_heads=2, causal=causal, chunk_size=8)
    x = torch.randn(2, 45, 16)
    results = {}
    for impl in ("naive", "chunk"):
        mixer.impl = impl
        xi = x.clone().requires_grad_()
        y = mixer(xi)
        grads = torch.autograd.grad((y * torch.cos(y)).sum(), [xi, *mixer.parameters()])
        results[impl] = (y.detach(), *grads)
    for i, (fast, reference) in enumerate(zip(results["chunk"], results["naive"])):
        assert_rel_close(fast, reference, 1e-5, f"causal={causal} result {i}")


def test_flow_arguments_are_checked():
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        build_mixer("flow", 16, chunk_size=0)
    with pytest.raises(ValueError, match="impl='triton' is unknown"):
        build_mixer("flow", 16, impl="triton")
    with pytest.raises(ValueError, match="pattern 'noncausal_cross' is not supported"):
        build_mixer("flow", 16, causal=False)(torch.randn(1, 3, 16), context=torch.randn(1, 4, 16))
