"""Compile every seqmix Triton kernel for an NVIDIA target without a GPU (pre-flight for the GPU benchmark).

    python -m benchmarks.kernels_compile_check                 # sm_90 (H100/H200), bf16, head dim 128
    python -m benchmarks.kernels_compile_check --dtype fp32 --head-dim 64 --arch 80

Triton compiles to PTX and runs the ``ptxas`` its wheel ships, so compile errors, type errors
in loop-carried values and shared-memory overruns show up on a machine with no GPU. It
compiles one configuration per kernel (BV = 64; the RNN kernels with their launch options)
and prints the time, shared memory and a final ALL OK / SOME FAILED (exit status 0 / 1).
It proves nothing about speed or numbers; the interpreter tests and the GPU benchmark do that.
"""

import argparse
import inspect
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from benchmarks.common import Stopwatch
import seqmix.kernels.delta_rule.triton as dr
import seqmix.kernels.gla.triton as gla
import seqmix.kernels.linear_attn.triton as la
import seqmix.kernels.rnn.triton as rnn
import seqmix.kernels.scan.triton as sc


def compile_kernel(kernel, target, types: dict, constexprs: dict, num_warps: int = 4, num_stages: int = 2):
    """Compile ``kernel`` (a JITFunction, possibly wrapped by autotune/heuristics) for ``target``."""
    fn = kernel
    while not isinstance(fn, triton.runtime.jit.JITFunction):
        fn = fn.fn
    signature = {p: ("constexpr" if p in constexprs else types[p]) for p in inspect.signature(fn.fn).parameters}
    with Stopwatch() as watch:
        compiled = triton.compile(ASTSource(fn, signature, constexprs), target=target,
                                  options={"num_warps": num_warps, "num_stages": num_stages})
    return watch.wall_s, compiled.metadata.shared


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 (A100), 90 (H100/H200)")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--rnn-dim", type=int, default=256)
    parser.add_argument("--only", default="", help="compile only the kernels whose name contains this")
    args = parser.parse_args(argv)
    target = GPUTarget("cuda", args.arch, 32)
    failed = []

    def run(name, kernel, types, constexprs, **options):
        if args.only not in name:
            return
        try:
            seconds, shared = compile_kernel(kernel, target, types, constexprs, **options)
            print(f"OK   {name:16s} {seconds:6.1f} s  shared memory {shared} B", flush=True)
        except Exception as error:  # report every kernel, then fail at the end
            failed.append(name)
            print(f"FAIL {name}: {type(error).__name__}: {str(error)[:1500]}", flush=True)

    D, RK = args.head_dim, args.rnn_dim
    P, F32, I32 = "*" + args.dtype, "*fp32", "*i32"
    common = dict(H=16, K=D, V=D, BT=64, BK=D, BV=64)
    run("linear_attn fwd", la._fwd_kernel,
        dict(q=P, k=P, v=P, decay=F32, h0=F32, o=P, ht=F32, offsets=I32, scale="fp32"),
        dict(common, HAS_DECAY=True, HAS_H0=True, STORE_HT=True))
    run("linear_attn bwd", la._bwd_kernel,
        dict(q=P, k=P, v=P, do=P, decay=F32, h0=F32, dht=F32, dq=F32, dk=F32, dv=P, dh0=F32, offsets=I32,
             scale="fp32", T_total="i32"),
        dict(common, HAS_DECAY=True, HAS_H0=True, HAS_DHT=True, STORE_DH0=True))
    run("gla fwd", gla._fwd_kernel,
        dict(q=P, k=P, v=P, g=P, h0=F32, o=P, ht=F32, offsets=I32, scale="fp32"),
        dict(common, BC=16, HAS_H0=True, STORE_HT=True))
    run("gla bwd", gla._bwd_kernel,
        dict(q=P, k=P, v=P, g=P, do=P, h0=F32, dht=F32, dq=F32, dk=F32, dv=P, dh0=F32, dbq=F32, dbk=F32,
             offsets=I32, scale="fp32", T_total="i32"),
        dict(common, BC=16, HAS_H0=True, HAS_DHT=True, STORE_DH0=True))
    run("gla dg", gla._dg_kernel, dict(db=F32, d_last=F32, dg=F32, offsets=I32),
        dict(H=16, K=D, BT=64, BK=D, HAS_LAST=True))
    run("delta fwd", dr._fwd_kernel,
        dict(q=P, k=P, v=P, beta=P, h0=F32, o=P, ht=F32, states=F32, offsets=I32, scale="fp32", max_chunks="i32"),
        dict(common, HAS_H0=True, STORE_O=True, STORE_HT=True, STORE_STATES=True))
    run("delta bwd", dr._bwd_kernel,
        dict(q=P, k=P, v=P, beta=P, do=P, dht=F32, states=F32, dq=F32, dk=F32, dv=P, dbeta=F32, dh0=F32,
             offsets=I32, scale="fp32", max_chunks="i32", T_total="i32"),
        dict(common, HAS_DHT=True, STORE_DH0=True))
    run("scan fwd", sc._fwd_kernel,
        dict(s=P, v=P, m0=F32, u0=F32, w0=F32, o=P, row_max=F32, row_den=F32, m_t=F32, u_t=F32, w_t=F32, T="i32"),
        dict(H=16, V=D, BT=64, BV=64, HAS_H0=True, STORE_FINAL=True))
    run("scan bwd", sc._bwd_kernel,
        dict(s=P, v=P, do=P, delta=F32, row_max=F32, row_den=F32, m0=F32, m_t=F32, du_t=F32, dw_t=F32, dv=P,
             ds=F32, du0=F32, dw0=F32, T="i32"),
        dict(H=16, V=D, BT=64, BV=64, HAS_H0=True, HAS_DFINAL=True))
    # the head-wise RNNs: 4 heads of --rnn-dim (FlashRNN's 4 heads of 256 by default)
    options = rnn._launch_options(RK)
    rc = dict(H=4, K=RK, BB=16, BK=RK)
    run("lstm fwd", rnn._lstm_fwd,
        dict(gx=P, R=P, h0=F32, c0=F32, y=P, pre=F32, cs=F32, h_t=F32, c_t=F32, B="i32", T="i32"),
        dict(rc, HAS_H0=True, STORE_FINAL=True), **options)
    run("lstm bwd", rnn._lstm_bwd,
        dict(R=P, pre=F32, cs=F32, c0=F32, dy=P, dh_t=F32, dc_t=F32, dpre=F32, dh0=F32, dc0=F32, B="i32", T="i32"),
        dict(rc, HAS_H0=True, HAS_DFINAL=True), **options)
    run("gru fwd", rnn._gru_fwd, dict(gx=P, R=P, bias_n=F32, h0=F32, y=P, pre=F32, B="i32", T="i32"),
        dict(rc, HAS_H0=True), **options)
    run("gru bwd", rnn._gru_bwd,
        dict(gx=P, R=P, pre=F32, y=P, h0=F32, dy=P, dh_t=F32, dgx=F32, dq_n=F32, dh0=F32, B="i32", T="i32"),
        dict(rc, HAS_H0=True, HAS_DFINAL=False), **options)
    run("slstm fwd", rnn._slstm_fwd,
        dict(gx=P, R=P, h0=F32, c0=F32, n0=F32, m0=F32, y=P, pre=F32, cs=F32, ns=F32, ms=F32, h_t=F32, c_t=F32,
             n_t=F32, m_t=F32, B="i32", T="i32"),
        dict(rc, HAS_H0=True, STORE_FINAL=True), **options)
    run("slstm bwd", rnn._slstm_bwd,
        dict(R=P, pre=F32, cs=F32, ns=F32, ms=F32, c0=F32, n0=F32, m0=F32, dy=P, dh_t=F32, dc_t=F32, dn_t=F32,
             dm_t=F32, dpre=F32, dh0=F32, dc0=F32, dn0=F32, dm0=F32, B="i32", T="i32"),
        dict(rc, HAS_H0=True, HAS_DFINAL=True), **options)

    print("ALL OK" if not failed else f"SOME FAILED: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
