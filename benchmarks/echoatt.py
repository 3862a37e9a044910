"""EchoAtt's savings: parameters, FLOPs and KV cache of a softmax stack with and without attention sharing.

    python -m benchmarks.echoatt                                       # d=256, 8 layers, T=1024, share {2:1, 3:1, 5:4, 6:4}
    python -m benchmarks.echoatt --d-model 512 --layers 12 --share 2:1 3:1 4:1 6:5 7:5 8:5

Builds two ``MixerStack``s of causal :class:`SoftmaxAttention` (same size, GLU channel mixers), the second with
``share_attention`` (the shared layers apply their source layer's probabilities to their own values and own no
W_q/W_k), and counts, without timing anything: parameters (the whole stack and the attention mixers alone),
FLOPs of one forward and of forward + backward over ``[1, T, D]`` (``torch.utils.flop_counter.FlopCounterMode``;
both stacks with ``impl="naive"``, because the counter does not see the CPU's fused SDPA), and the KV cache
kept after ``T`` tokens (floats per sequence, ``state_size``). Writes ``benchmarks/results/echoatt.md``.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import header, markdown_table, write_result
from seqmix.core.blocks import MixerStack, mixer_factory


def parse_share(pairs: list[str]) -> dict[int, int]:
    """``["2:1", "3:1"]`` -> ``{2: 1, 3: 1}``."""
    share = {}
    for pair in pairs:
        layer, sep, source = pair.partition(":")
        if not sep or not layer.isdigit() or not source.isdigit():
            raise SystemExit(f"echoatt: --share takes layer:source pairs such as 2:1 3:1, got {pair!r}")
        share[int(layer)] = int(source)
    return share


def count(stack: MixerStack, seq_len: int, seed: int) -> dict[str, int]:
    """Parameters (stack, attention mixers), forward and forward+backward FLOPs over ``[1, T, D]``, KV cache."""
    d = stack.norm.normalized_shape[0]
    x = torch.randn(1, seq_len, d, generator=torch.Generator().manual_seed(seed))
    with FlopCounterMode(display=False) as forward:
        stack(x)
    with FlopCounterMode(display=False) as both:
        stack(x.requires_grad_()).sum().backward()
    return {"params": sum(p.numel() for p in stack.parameters()),
            "attention params": sum(p.numel() for b in stack.blocks for p in b.mixer.parameters()),
            "forward FLOPs": forward.get_total_flops(),
            "forward+backward FLOPs": both.get_total_flops(),
            "KV cache floats": sum(b.mixer.state_size(seq_len) for b in stack.blocks)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--share", nargs="+", default=["2:1", "3:1", "5:4", "6:4"],
                        help="layer:source pairs (0-based): layer reuses source's attention probabilities")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the input (FLOPs ignore it)")
    args = parser.parse_args(argv)
    share = parse_share(args.share)
    factory = mixer_factory("softmax", n_heads=args.heads, causal=True, impl="naive")
    stacks = {}
    for name, sharing in (("unshared", None), ("EchoAtt shared", share)):
        torch.manual_seed(args.seed)
        stacks[name] = MixerStack(args.d_model, args.layers, factory, causal=True, share_attention=sharing)
    counts = {name: count(stack, args.seq_len, args.seed) for name, stack in stacks.items()}
    base, shared = counts["unshared"], counts["EchoAtt shared"]
    rows = [(what, f"{base[what]:,}", f"{shared[what]:,}", f"{1 - shared[what] / base[what]:.3f}") for what in base]
    for row in rows:
        print(" | ".join(row))
    notes = [f"stack: {args.layers} pre-norm blocks, d_model={args.d_model}, causal SoftmaxAttention with "
             f"n_heads={args.heads} (impl naive, no rotary), GLU channel mixer (mlp_ratio 4), LayerNorm",
             f"share_attention: {share} ({len(share)} of {args.layers} layers reuse an earlier layer's probabilities "
             "and own no W_q/W_k)",
             f"FLOPs: torch.utils.flop_counter over one sequence of T={args.seq_len} (batch 1), forward and forward + "
             "backward of the sum of the outputs; KV cache: floats kept per sequence after T tokens (a shared layer "
             "keeps its values only)",
             "the FLOP counter counts matrix products (projections, Q K^T, P V, channel mixers), not softmax, norms or "
             "element-wise work; counted, not timed: no machine load enters these numbers"]
    text = (header("EchoAtt: parameters and FLOPs saved by attention sharing", seeds=[args.seed], notes=notes)
            + markdown_table(["quantity", "unshared", "EchoAtt shared", "fraction saved"], rows))
    print(f"wrote {write_result('echoatt', text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
