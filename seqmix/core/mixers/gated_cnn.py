"""The gated CNN token mixer of MambaOut (Yu & Wang 2024, "MambaOut: Do We Really Need
Mamba for Vision?"): a Gated Linear Unit whose value branch has a depthwise convolution.

    g, i, c = split(fc1(norm(x)))           g: hidden, i: hidden - conv, c: conv channels
    y = fc2(gelu(g) * cat(i, dwconv(c)))    dwconv: depthwise, kernel 7, along time

In a :class:`~seqmix.core.blocks.MixerBlock` the block's pre-norm is MambaOut's norm, so
``norm`` defaults to False here (set it for standalone use). Along time the convolution is
causal (left padding ``kernel - 1``) or centred (``kernel // 2`` each side); with
``spatial_shape=(H, W)`` the tokens ``[B, H*W, D]`` are an image in raster order and the
convolution is 2-D and centred, as in MambaOut's vision blocks.

The causal 1-D form is recurrent: its state is the last ``kernel - 1`` conv inputs.
Implementations: ``"naive"`` (the convolution as an explicit sum over unfolded windows) and
``"conv"`` (``F.conv1d`` / ``F.conv2d`` with ``groups = channels``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.core.layers import depthwise_conv
from seqmix.core.mixer import Mixer, State, register_mixer


@register_mixer("gated_cnn")
class GatedCNN(Mixer):
    """MambaOut's gated CNN mixer.

    Args:
        expansion_ratio: hidden width ``int(expansion_ratio * d_model)`` of the gate and value (8/3).
        kernel_size: depthwise kernel (MambaOut: 7); odd unless causal 1-D.
        conv_ratio: ``int(conv_ratio * d_model)`` value channels get the convolution, in (0, hidden].
        norm: a LayerNorm before fc1 (False when the block already pre-normalises).
        spatial_shape: ``(H, W)`` to treat the ``H * W`` tokens as an image (2-D convolution,
            non-causal only); None for 1-D along time.
    """

    paper = "Yu & Wang 2024, MambaOut: Do We Really Need Mamba for Vision?"
    complexity = "O(T D k)"

    patterns = frozenset({"causal_self", "noncausal_self"})
    impls = ("naive", "conv")
    recurrent = True
    test_configs = ({"kernel_size": 7}, {"kernel_size": 3, "conv_ratio": 0.5, "expansion_ratio": 2.0, "norm": True})

    def __init__(self, d_model: int, *, causal: bool = True, impl: str = "auto", expansion_ratio: float = 8 / 3,
                 kernel_size: int = 7, conv_ratio: float = 1.0, norm: bool = False,
                 spatial_shape: tuple[int, int] | None = None):
        super().__init__(d_model, n_heads=1, causal=causal, impl=impl)
        hidden = int(expansion_ratio * d_model)
        conv_channels = int(conv_ratio * d_model)
        if hidden < 1:
            raise ValueError(f"GatedCNN: expansion_ratio={expansion_ratio} gives a hidden width of {hidden}; "
                             f"it must be >= {1 / d_model:.3g} so that int(expansion_ratio * d_model) >= 1")
        if not 1 <= conv_channels <= hidden:
            raise ValueError(f"GatedCNN: conv_ratio={conv_ratio} gives {conv_channels} conv channels; it must give "
                             f"1..{hidden} (the hidden width), i.e. conv_ratio in [{1 / d_model:.3g}, "
                             f"{hidden / d_model:.3g}]")
        if not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"GatedCNN: kernel_size must be a positive int (MambaOut uses 7), got {kernel_size!r}")
        if spatial_shape is not None:
            if causal:
                raise ValueError("GatedCNN: spatial_shape (2-D convolution) is non-causal; set causal=False")
            if len(spatial_shape) != 2 or any(not isinstance(s, int) or s < 1 for s in spatial_shape):
                raise ValueError(f"GatedCNN: spatial_shape must be (height, width) of positive ints, "
                                 f"got {spatial_shape!r}")
            spatial_shape = tuple(spatial_shape)
        if not causal and kernel_size % 2 == 0:
            raise ValueError(f"GatedCNN: a centred (non-causal) convolution needs an odd kernel_size, "
                             f"got {kernel_size}")
        self.hidden, self.conv_channels, self.kernel_size = hidden, conv_channels, kernel_size
        self.spatial_shape = spatial_shape
        self.norm = nn.LayerNorm(d_model, eps=1e-6) if norm else nn.Identity()
        self.fc1 = nn.Linear(d_model, 2 * hidden)
        kernel = (kernel_size, kernel_size) if spatial_shape is not None else (kernel_size,)
        self.conv_weight = nn.Parameter(torch.empty(conv_channels, *kernel))
        self.conv_bias = nn.Parameter(torch.empty(conv_channels))
        bound = self.conv_weight[0].numel() ** -0.5  # PyTorch's default for a depthwise conv (fan-in = taps)
        nn.init.uniform_(self.conv_weight, -bound, bound)
        nn.init.zeros_(self.conv_bias)
        self.fc2 = nn.Linear(hidden, d_model)

    def _forward(self, x, *, context, mask, state, return_state):
        b, t, _ = x.shape
        cache_shape = (b, self.kernel_size - 1, self.conv_channels)
        if state is not None and (not isinstance(state, Tensor) or tuple(state.shape) != cache_shape):
            got = tuple(state.shape) if isinstance(state, Tensor) else type(state).__name__
            raise ValueError(f"GatedCNN: state must be the conv cache [B, kernel_size - 1, conv_channels] = "
                             f"{list(cache_shape)} (from init_state or a previous piece), got {got}")
        g, i, c = self.fc1(self.norm(x)).split((self.hidden, self.hidden - self.conv_channels,
                                                self.conv_channels), dim=-1)
        impl = self.resolve_impl(x)
        if self.spatial_shape is not None:
            height, width = self.spatial_shape
            if t != height * width:
                raise ValueError(f"GatedCNN: spatial_shape={self.spatial_shape} needs {height * width} tokens, "
                                 f"got T={t}")
            image = c.reshape(b, height, width, self.conv_channels)  # [B, H*W, C] -> [B, H, W, C]
            c = depthwise_conv(image, self.conv_weight, self.conv_bias, causal=False, impl=impl)  # [B, H, W, C]
            c = c.reshape(b, t, -1)  # [B, H, W, C] -> [B, H*W, C]
        else:
            conv_in = c
            c = depthwise_conv(c, self.conv_weight, self.conv_bias, causal=self.causal, impl=impl, cache=state)
        y = self.fc2(F.gelu(g) * torch.cat((i, c), -1))
        if not return_state:
            return y
        past = state if state is not None else conv_in.new_zeros(b, self.kernel_size - 1, self.conv_channels)
        return y, torch.cat((past, conv_in), 1)[:, conv_in.shape[1]:]  # the last k - 1 conv inputs

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> State:
        """The conv cache ``[B, kernel_size - 1, conv_channels]`` of zeros (the causal padding)."""
        if not self.causal or self.spatial_shape is not None:
            raise ValueError("GatedCNN: only the causal 1-D form has a state; build it with causal=True")
        return torch.zeros(batch_size, self.kernel_size - 1, self.conv_channels, device=device, dtype=dtype)

    def state_size(self, seq_len: int) -> int:
        if self.causal:
            return (self.kernel_size - 1) * self.conv_channels
        return seq_len * self.conv_channels  # a centred convolution needs the whole input at once

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, hidden={self.hidden}, conv_channels={self.conv_channels}, "
                f"kernel_size={self.kernel_size}, spatial_shape={self.spatial_shape}")
