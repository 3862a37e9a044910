"""Validation-only tuning runs for the text app (issue 6) -> benchmarks/results/emotion_tuning.md.

    SEQMIX_DATA=../shared/data HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.emotion_tune \
        --name k6 --config configs/text/redaffectivelm.yaml -- --model.context_lr 5e-5 ...

One seed of one config with CLI overrides; it reports the best-validation-loss checkpoint's
VALIDATION metrics only (test is never computed here, so no setting is chosen on test).
Each run appends one row to the tuning table (atomic rewrite), with the CPU model and commit it
ran on; ``--render`` only rewrites the table from the log. A setting run over several seeds
(rows named ``<setting>-s<seed>``) gets its mean per CPU model, since a seed gives slightly
different numbers on different CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from benchmarks.common import (RESULTS_DIR, REPO_ROOT, Stopwatch, atomic_write_text, cpu_model, git_commit,
                               header, markdown_table, results_lock, write_result)
from benchmarks.emotion import build, predictions

from seqmix.apps.text.metrics import emotion_metrics
from seqmix.apps.text.commands import load_checkpoint


LOG = RESULTS_DIR / "emotion_tuning.jsonl"


def row_seed(row: dict) -> int:
    """The seed a row ran with: ``--seed_everything N`` in its overrides wins over ``--seed`` (early rows)."""
    words = row["overrides"].split()
    return int(words[words.index("--seed_everything") + 1]) if "--seed_everything" in words else row["seed"]


def read_log() -> list[dict]:
    """The logged runs, one JSON object per line of ``emotion_tuning.jsonl``."""
    return [json.loads(line) for line in LOG.read_text().splitlines()] if LOG.is_file() else []


def without_seed(overrides: str) -> str:
    """The overrides without ``--seed_everything N``."""
    words = overrides.split()
    if "--seed_everything" in words:
        at = words.index("--seed_everything")
        del words[at: at + 2]
    return " ".join(words) or "(none)"


def render(rows: list[dict]) -> None:
    rows = [{**r, "seed": row_seed(r)} for r in rows]
    keys = list(dict.fromkeys(k for r in rows for k in r))  # every column any row has (early rows lack commit)
    text = header("Text app: validation-only tuning runs (issue 6)", seeds=sorted({r["seed"] for r in rows}),
                  notes=["one seed per row; best-validation-loss checkpoint; VALIDATION metrics only (test never "
                         "computed here)",
                         "torch threads 1; `load` is the 1-min load average at the end of the run; `cpu` the CPU model "
                         "(a seed gives slightly different numbers on different CPUs: compare settings within one CPU)",
                         "the command line above is the last run's (or --render); each row names its overrides"])
    text += markdown_table(keys, [[r.get(k, "") for k in keys] for r in rows])
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:  # a setting run over several seeds is named "<setting>-s<seed>"; one group per CPU
        setting, dash, seed = r["name"].rpartition("-s")
        if dash and seed.isdigit():
            groups.setdefault((setting, r.get("cpu", "")), []).append(r)
    groups = {key: g for key, g in groups.items() if len(g) > 1}
    if groups:
        text += ("\n\n## Settings run over several seeds (mean over the rows named `<setting>-s<seed>`, per CPU)\n\n"
                 + markdown_table(["setting", "cpu", "config", "overrides (without the seed)", "seeds", "val acc@1",
                                   "val rmse", "val ap_document"],
                                  [[name, cpu, g[0]["config"], without_seed(g[0]["overrides"]),
                                    " ".join(str(row_seed(r)) for r in g),
                                    *(f"{sum(r[k] for r in g) / len(g):.{p}f}"
                                      for k, p in (("val acc@1", 3), ("val rmse", 4), ("val ap_document", 3)))]
                                   for (name, cpu), g in groups.items()]))
    write_result("emotion_tuning", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name")
    parser.add_argument("--config")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render", action="store_true", help="only rewrite the table from the log")
    parser.add_argument("overrides", nargs="*", help="LightningCLI overrides, after --")
    args = parser.parse_args()
    if args.render:
        rows = read_log()
        if not rows:
            raise SystemExit(f"--render: no runs logged in {LOG}")
        return render(rows)
    if not args.name or not args.config:
        raise SystemExit("give --name and --config (or --render)")
    torch.set_num_threads(1)
    if not os.environ.get("HF_HUB_OFFLINE"):
        raise SystemExit("run with HF_HUB_OFFLINE=1")
    with tempfile.TemporaryDirectory() as tmp:
        model, dm, trainer = build(args.config, args.seed, tmp, str(REPO_ROOT / "runs/text/cache"), args.overrides)
        dm.setup()
        with Stopwatch() as watch:
            trainer.fit(model, dm)
        seconds = watch.wall_s
        best, ckpt = load_checkpoint(trainer.checkpoint_callback.best_model_path)
        gold = dm.targets[dm.split_rows("val")].double().numpy()
        m = emotion_metrics(predictions(best, dm, "val"), gold)
    row = {"name": args.name, "config": Path(args.config).name, "seed": args.seed,
           "overrides": " ".join(args.overrides), "val acc@1": round(m["acc@1"], 3), "val rmse": round(m["rmse"], 4),
           "val ap_document": round(m["ap_document"], 3), "best epoch": int(ckpt["epoch"]),
           "epochs": trainer.current_epoch, "fit s": round(seconds), "load": round(os.getloadavg()[0], 1),
           "cpu": cpu_model(), "commit": git_commit()}
    print(json.dumps(row), flush=True)
    with results_lock(LOG.name):  # re-read: a concurrent run may have logged its row meanwhile
        rows = read_log() + [row]
        atomic_write_text(LOG, "".join(json.dumps(r) + "\n" for r in rows))
        render(rows)


if __name__ == "__main__":
    main()
