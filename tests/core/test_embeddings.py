"""ConvPatchEmbedding (LMUFormer's convolutional patch embedding, causal): token counts; a prefix's
tokens are the tokens' prefix and a change at input step p moves only the tokens from p's patch on;
the receptive field is exact; with the LMU after it the whole stack stays causal; bad arguments fail
naming the argument and its range."""

import pytest
import torch

from seqmix.core import build_mixer
from seqmix.core.embeddings import ConvPatchEmbedding


def embedding(**sizes) -> ConvPatchEmbedding:
    """An eval-mode embedding with non-trivial BatchNorm statistics (running mean and variance random)."""
    torch.manual_seed(0)
    emb = ConvPatchEmbedding(**{"in_channels": 2, "d_model": 16, "kernel_size": 3, "n_layers": 3, "stride": 2,
                                **sizes})
    for norm in emb.norms:
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
    return emb.eval()


@pytest.mark.parametrize("t,stride,tokens", [(12, 1, 12), (11, 2, 5), (12, 3, 4), (3, 3, 1)])
def test_token_count_is_whole_patches(t, stride, tokens):
    emb = embedding(stride=stride, kernel_size=max(3, stride))
    assert emb(torch.randn(2, t, 2)).shape == (2, tokens, 16)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_causal_prefix_and_perturbation(stride):
    emb = embedding(stride=stride, kernel_size=4)
    x = torch.randn(2, 10 * stride, 2)
    full = emb(x)
    for j in (1, 4, 9):
        assert torch.allclose(emb(x[:, : j * stride])[:, :j], full[:, :j], atol=1e-6), f"prefix of {j} patches"
    p = 5 * stride + stride // 2  # an input step inside patch 5
    moved = x.clone()
    moved[:, p:] += torch.randn(2, 10 * stride - p, 2)
    changed = (emb(moved) - full).abs().amax((0, 2))  # [tokens]
    assert torch.all(changed[:5] == 0), f"tokens before patch 5 moved: {changed[:5].tolist()}"
    assert torch.all(changed[5:] > 1e-4), "tokens from patch 5 on must see the change"


def test_receptive_field_is_exact():
    emb = embedding(stride=2, kernel_size=3, n_layers=3)
    assert emb.receptive_field == 3 + 2 * 2 * 2
    x = torch.randn(1, 40, 2)
    j = 15  # token j ends at input (j + 1) s - 1 = 31
    first_seen = (j + 1) * 2 - emb.receptive_field
    for step, seen in ((first_seen, True), (first_seen - 1, False)):
        moved = x.clone()
        moved[:, step] += 1.0
        with torch.no_grad():
            delta = float((emb(moved) - emb(x))[0, j].abs().max())
        assert (delta > 1e-4) == seen, f"input {step}: token {j} moved by {delta:.2e}, expected seen={seen}"


def test_embedding_then_lmu_stays_causal():
    emb = embedding(stride=2, kernel_size=4, d_model=16)
    lmu = build_mixer("lmu", 16, n_heads=2, order=8, theta=8.0)
    x = torch.randn(1, 48, 2)
    moved = x.clone()
    moved[:, 30:] += 1.0  # patch 15 on
    changed = (lmu(emb(moved)) - lmu(emb(x))).abs().amax((0, 2))  # [24 tokens]
    assert torch.all(changed[:15] == 0) and torch.all(changed[15:] > 0)


def test_trains_with_batch_statistics():
    emb = ConvPatchEmbedding(1, 8, kernel_size=4, n_layers=2, stride=4)
    x = torch.randn(4, 32, 1, requires_grad=True)
    emb(x).square().mean().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is not None for p in emb.parameters())
    assert [c.out_channels for c in emb.convs] == [4, 8], "widths double up to d_model"


@pytest.mark.parametrize("arguments,message", [
    ({"kernel_size": 2, "stride": 3}, r"kernel_size must be an int >= 3 \(at least stride=3"),
    ({"n_layers": 0}, "n_layers must be an int >= 1"),
    ({"stride": True}, "stride must be an int >= 1"),
    ({"d_model": 0}, "d_model must be an int >= 1"),
    ({"in_channels": 1.5}, "in_channels must be an int >= 1"),
])
def test_bad_arguments_name_their_range(arguments, message):
    with pytest.raises(ValueError, match=f"ConvPatchEmbedding: {message}"):
        ConvPatchEmbedding(**{"in_channels": 2, "d_model": 16, **arguments})


def test_bad_inputs_say_what_is_expected():
    emb = ConvPatchEmbedding(2, 16, kernel_size=4, stride=4)
    with pytest.raises(ValueError, match=r"x must be \[batch, time, in_channels=2\], got \(1, 8, 3\)"):
        emb(torch.randn(1, 8, 3))
    with pytest.raises(ValueError, match="shorter than one patch"):
        emb(torch.randn(1, 3, 2))
