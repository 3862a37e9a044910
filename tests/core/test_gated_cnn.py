"""MambaOut's gated CNN: the mixer against a direct transcription of MambaOut's block (1-D
causal and 2-D), the unfold reference against F.conv, the conv cache, clear errors."""

import pytest
import torch
import torch.nn.functional as F

from seqmix.core import build_mixer


def mambaout_reference(mixer, x, *, causal, image=None):
    """MambaOut's GatedCNNBlock token path (no residual), written out with nn.functional."""
    g, i, c = mixer.fc1(mixer.norm(x)).split((mixer.hidden, mixer.hidden - mixer.conv_channels,
                                              mixer.conv_channels), -1)
    k = mixer.kernel_size
    if image is not None:
        h, w = image
        c = c.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)  # [B, H*W, C] -> [B, C, H, W]
        c = F.conv2d(c, mixer.conv_weight[:, None], mixer.conv_bias, padding=k // 2, groups=mixer.conv_channels)
        c = c.permute(0, 2, 3, 1).reshape(x.shape[0], h * w, -1)  # [B, C, H, W] -> [B, H*W, C]
    else:
        c = F.pad(c.transpose(1, 2), (k - 1, 0) if causal else (k // 2, k // 2))  # [B, C, T + k - 1]
        c = F.conv1d(c, mixer.conv_weight[:, None], mixer.conv_bias, groups=mixer.conv_channels).transpose(1, 2)
    return mixer.fc2(F.gelu(g) * torch.cat((i, c), -1))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("impl", ["naive", "conv"])
def test_gated_cnn_1d_matches_mambaout(causal, impl, assert_rel_close):
    torch.manual_seed(0)
    mixer = build_mixer("gated_cnn", 16, causal=causal, impl=impl, conv_ratio=0.5, norm=True)
    x = torch.randn(2, 25, 16)
    with torch.no_grad():
        assert_rel_close(mixer(x), mambaout_reference(mixer, x, causal=causal), 1e-6, f"causal={causal} {impl}")


@pytest.mark.parametrize("impl", ["naive", "conv"])
def test_gated_cnn_2d_matches_mambaout(impl, assert_rel_close):
    torch.manual_seed(0)
    mixer = build_mixer("gated_cnn", 16, causal=False, impl=impl, spatial_shape=(5, 6))
    x = torch.randn(2, 30, 16)
    with torch.no_grad():
        assert_rel_close(mixer(x), mambaout_reference(mixer, x, causal=False, image=(5, 6)), 1e-6, f"2-D {impl}")
    with pytest.raises(ValueError, match=r"spatial_shape=\(5, 6\) needs 30 tokens, got T=29"):
        mixer(x[:, :29])


def test_gated_cnn_state_is_the_conv_cache():
    torch.manual_seed(0)
    mixer = build_mixer("gated_cnn", 16, kernel_size=5)
    state = mixer.init_state(2)
    assert state.shape == (2, 4, mixer.conv_channels) and mixer.state_size(100) == 4 * mixer.conv_channels
    with pytest.raises(ValueError, match=r"state must be the conv cache"):
        mixer(torch.randn(2, 3, 16), state=torch.zeros(2, 3, mixer.conv_channels))


def test_gated_cnn_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="conv_ratio=3.0 gives 48 conv channels"):
        build_mixer("gated_cnn", 16, conv_ratio=3.0)
    with pytest.raises(ValueError, match="needs an odd kernel_size"):
        build_mixer("gated_cnn", 16, causal=False, kernel_size=4)
    with pytest.raises(ValueError, match="spatial_shape .* is non-causal"):
        build_mixer("gated_cnn", 16, causal=True, spatial_shape=(4, 4))
    with pytest.raises(ValueError, match="kernel_size must be a positive int"):
        build_mixer("gated_cnn", 16, kernel_size=0)
