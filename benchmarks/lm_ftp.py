"""Future Token Prediction vs next-token training at equal steps: next-token bits per byte and the smoothness of
adjacent top-layer vectors (issue 33, objective 1) -> ``benchmarks/results/lm_ftp.md``.

Both runs are ``seqmix lm fit --config configs/lm/ftp.yaml`` (the second with ``--model.objective next_token``):
the same network, data order, seed and number of steps; each runs in its own process on one thread, side by
side, and its CPU seconds are measured (the machine is shared: wall seconds are reported beside them). Each
run's last checkpoint is then evaluated on the three test plays (``--eval-windows`` consecutive windows of
the training context from their start): the LM head's next-token bits per byte, the FTP decoder's bits per
byte for its first token (``x_{t+1}``, FTP runs only), and the mean cosine of adjacent top-layer vectors
``cos(h_t, h_{t+1})`` (the paper's smoothness), with the same cosine for vectors 8 positions apart.

    python -m benchmarks.lm_ftp                 # train both (runs/lm/ftp_bench/...), evaluate, write the table
    python -m benchmarks.lm_ftp --skip-train    # evaluate the runs already there
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS_DIR, REPO_ROOT, add_cached_run, header, markdown_table, read_run_cache, write_result

CONFIG = "configs/lm/ftp.yaml"
OBJECTIVES = ("next_token", "ftp")
CACHE = RESULTS_DIR / "lm_ftp_runs.json"


def run_dir(objective: str, seed: int) -> Path:
    return REPO_ROOT / "runs" / "lm" / "ftp_bench" / f"{objective}_seed{seed}"


def train(seed: int, steps: int | None) -> dict[str, dict]:
    """Both objectives' ``fit`` side by side, one thread each; ``{objective: {cpu_s, wall_s, rc}}``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    procs = {}
    for objective in OBJECTIVES:
        folder = run_dir(objective, seed)
        args = [sys.executable, "-m", "seqmix.cli", "lm", "fit", "--config", CONFIG, "--model.objective", objective,
                "--seed_everything", str(seed), "--trainer.logger.init_args.save_dir", str(folder.parent),
                "--trainer.logger.init_args.name", folder.name, "--trainer.logger.init_args.version", "0"]
        if steps is not None:
            args += ["--trainer.max_steps", str(steps)]
        folder.parent.mkdir(parents=True, exist_ok=True)
        log = open(folder.parent / f"{folder.name}.log", "w")
        procs[objective] = (subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
                            time.perf_counter(), log)
    done = {}
    while len(done) < len(procs):
        pid, status, usage = os.wait4(-1, 0)
        for objective, (proc, start, log) in procs.items():
            if proc.pid == pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                log.close()
                done[objective] = {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": time.perf_counter() - start,
                                   "rc": proc.returncode}
    for objective, record in done.items():
        if record["rc"] != 0:
            raise SystemExit(f"lm_ftp: the {objective} run failed (rc {record['rc']}); see "
                             f"{run_dir(objective, seed).parent / (run_dir(objective, seed).name + '.log')}")
    return done


@torch.no_grad()
def evaluate(ckpt: Path, windows: int) -> dict[str, float]:
    """Test-split next-token bits per byte (LM head; FTP decoder's first token) and adjacent cosines."""
    from seqmix.apps.lm.data import IGNORE_INDEX, LMDataModule
    from seqmix.apps.lm.ftp import adjacent_cosine, future_targets
    from seqmix.apps.lm.module import LanguageModel
    from seqmix.apps.module import load_trained

    module, _ = load_trained(LanguageModel, ckpt, "lm", "run python -m benchmarks.lm_ftp")
    context = module.hparams.max_len
    data = LMDataModule(corpus="shakespeare", tokenizer="bytes", context=context, batch_size=16)
    test = data.split_data("test")
    n = min(windows, len(test))
    head_nats = ftp_nats = cos1 = cos8 = 0.0
    count = batches = 0
    for start in range(0, n, 16):
        inputs, targets, _ = (torch.stack(x) for x in zip(*(test[i] for i in range(start, min(n, start + 16)))))
        hidden = module.net.stack(module.net.embed_tokens(inputs))  # [B, T, D]
        valid = targets != IGNORE_INDEX
        logits = module.net.token_logits(hidden)  # [B, T, V]
        head_nats += float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                                           reduction="sum"))
        count += int(valid.sum())
        cos1 += float(adjacent_cosine(hidden, valid))
        cos8 += float(F.cosine_similarity(hidden[:, 8:], hidden[:, :-8], dim=-1).mean())
        batches += 1
        if module.ftp is not None:
            future = future_targets(targets, module.ftp.n_future)  # [B, T, N]
            first = module.ftp.logits(hidden.flatten(0, 1), future.flatten(0, 1), module.net.embed)[:, 0]  # [B T, V]
            ftp_nats += float(F.cross_entropy(first, targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"))
    bits = 1 / (count * math.log(2))  # the plays are ASCII but for 64 em dashes: a byte per token here
    return {"head_bpc": head_nats * bits, "ftp_bpc": ftp_nats * bits if module.ftp is not None else None,
            "cos1": cos1 / batches, "cos8": cos8 / batches, "tokens": count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="override the config's trainer.max_steps")
    parser.add_argument("--eval-windows", type=int, default=400, help="test windows evaluated (default 400)")
    parser.add_argument("--skip-train", action="store_true", help="evaluate the runs already under runs/lm/ftp_bench")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    key = f"seed{args.seed}"
    if not args.skip_train:
        add_cached_run(CACHE, key, {"train": train(args.seed, args.steps), "command": " ".join(sys.argv)})
    cached = read_run_cache(CACHE).get(key, {}).get("train", {})
    rows = []
    for objective in OBJECTIVES:
        ckpt = run_dir(objective, args.seed) / "version_0" / "checkpoints" / "last.ckpt"
        result = evaluate(ckpt, args.eval_windows)
        timing = cached.get(objective, {})
        rows.append([objective, f"{result['head_bpc']:.3f}",
                     "-" if result["ftp_bpc"] is None else f"{result['ftp_bpc']:.3f}",
                     f"{result['cos1']:.3f}", f"{result['cos8']:.3f}",
                     f"{timing.get('cpu_s', float('nan')):.0f}", f"{timing.get('wall_s', float('nan')):.0f}"])
    steps = args.steps if args.steps is not None else "the config's (300)"
    text = header("Future Token Prediction vs next-token training (Shakespeare, characters)", seeds=[args.seed], notes=[
        f"config: `{CONFIG}` (3 softmax layers, rotary, d_model 64, context 128, batch 16; FTP: N 8, L 4, "
        f"2 decoder blocks, g 0.8, 16 positions per window); steps: {steps}, equal for both objectives",
        f"evaluated: the last checkpoint on the first {args.eval_windows} windows of 128 bytes of the three test "
        "plays (each window from its own start)",
        "head bpc: next-token bits per byte of the tied LM head (in FTP runs it is trained on the detached "
        "top-layer vectors); FTP bpc: the FTP decoder's first token; cos(t, t+1) and cos(t, t+8): mean cosine of "
        "top-layer vectors 1 and 8 positions apart (the paper's smoothness)",
        "CPU s: user + system seconds of the fit process (1 thread); wall s under load from other sessions",
    ]) + markdown_table(["objective", "head bpc", "FTP bpc (1st token)", "cos(t, t+1)", "cos(t, t+8)", "CPU s",
                         "wall s"], rows)
    print(text)
    write_result("lm_ftp", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
