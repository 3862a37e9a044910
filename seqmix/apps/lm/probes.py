"""Probes of a trained language model (``seqmix lm probe <name> --ckpt ...``): each generates its material with a
seed (written to a JSONL file beside its results, so a run can be checked and repeated), scores it with the
model, and writes a markdown table and a figure.

- ``verbatim`` (Armeni et al. 2022, "Characterizing Verbatim Short-Term Memory in Neural Language Models"):
  text in which a list of nouns occurs twice, ``She wrote down the words: <list 1>.\\n<intervening text>She
  read the words again: <list 2>.``; the second list is the first **repeated**, the same nouns **shuffled**, or
  **novel** nouns (a control). The measure is the surprisal drop of each noun (bits, summed over its tokens)
  from its occurrence in the first list to the second, by position in the second list, for intervening texts
  of several lengths; also the relative surprisal ``100 * S2 / S1`` (the paper's repeat surprisal, a mean
  here). For ``novel`` the first-list noun at the same position is the reference (no noun repeats).
- ``reversal`` (the reversal curse; BICO, :mod:`~seqmix.apps.lm.bico`): ``n_facts`` fictitious facts
  ``<name> is <description>.`` (made-up names, descriptions from word lists) are fine-tuned on in that
  direction only, by next-token training or by BICO, then asked both ways as multiple choice among every
  fact's description (A->B: ``<name> is`` -> ``<description>.``) or name (B->A: ``<description> is`` ->
  ``<name>.``): the candidate with the highest log-likelihood is the answer. Chance level: ``1 / n_facts``.
  A BICO model is scored in BICO's mode (:func:`~seqmix.apps.lm.bico.bidirectional_nats`: the prompt read both
  ways with mirrored positions, the candidate causally after it, one forward) and causally.
- ``jrt`` (Arora et al. 2024, "Just read twice"): MQAR inside text: ``crown 41, sword 17, ...`` key-value
  pairs, then a key; the answer is the value with the highest likelihood among the context's values (chance
  ``1 / n_pairs``), with the pairs read once or twice (JRT-Prompt: the context repeated before the query).

The texts are encoded segment by segment (a noun's tokens are its own, whatever the tokenizer); with the byte
tokenizer this equals encoding the whole text.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmix.apps.files import atomic_write
from seqmix.apps.lm.bico import BICOObjective, bidirectional_nats, causal_loss
from seqmix.apps.lm.data import IGNORE_INDEX
from seqmix.core.mixer import check_int

PROBES: tuple[str, ...] = ("verbatim", "reversal", "jrt")
NOUNS: tuple[str, ...] = (
    "crown", "sword", "horse", "heart", "night", "blood", "queen", "ghost", "storm", "letter", "ring", "dagger",
    "castle", "garden", "river", "field", "tower", "church", "table", "window", "candle", "flower", "apple", "bell",
    "ship", "moon", "star", "tree", "stone", "gold", "bread", "wine", "book", "glove", "cloak", "door", "fire",
    "forest", "mountain", "wall", "bridge", "road", "coin", "mirror", "feather", "shield", "lamp", "bird",
)
FILLER = ("The evening was cold and the wind came down from the hills, so she closed the shutters, sat by the "
          "fire with her supper and spoke a while with her brother about the harvest and the price of grain. ")
BITS = 1 / math.log(2)


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return seed


def write_jsonl(path: Path, records: Sequence[dict]) -> Path:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------ scoring
def encode_segments(tokenizer, segments: Sequence[str]) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of the segments one after another, and each segment's ``(start, end)`` token span."""
    ids, spans = [], []
    for segment in segments:
        piece = tokenizer.encode(segment) if segment else []
        spans.append((len(ids), len(ids) + len(piece)))
        ids += piece
    return ids, spans


@torch.no_grad()
def token_nats(net, sequences: Sequence[list[int]], batch_size: int = 32) -> list[Tensor]:
    """Causal nats of every token after the first of each sequence: ``[len(seq) - 1]`` each (right-padded
    batches: the padding comes after, so a causal model never sees it)."""
    out: list[Tensor] = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        length = max(len(s) for s in chunk)
        tokens = torch.zeros(len(chunk), length, dtype=torch.long)  # [B, T]
        for i, s in enumerate(chunk):
            tokens[i, :len(s)] = torch.tensor(s)
        logits = net(tokens[:, :-1])  # [B, T - 1, V]
        nats = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
        nats = nats.view(len(chunk), length - 1)  # [B (T - 1)] -> [B, T - 1]
        out += [nats[i, :len(s) - 1] for i, s in enumerate(chunk)]
    return out


@torch.no_grad()
def choice_scores(net, prompt: list[int], candidates: Sequence[list[int]], *, bidirectional: bool = False) -> Tensor:
    """``[len(candidates)]`` summed nats of each candidate after ``prompt``: causal, or in BICO's mode with
    ``bidirectional`` (:func:`~seqmix.apps.lm.bico.bidirectional_nats`). The answer is the argmin."""
    if bidirectional:
        return torch.stack([n.sum() for n in bidirectional_nats(net, prompt, list(candidates))])
    nats = token_nats(net, [prompt + c for c in candidates])
    return torch.stack([n[len(prompt) - 1:].sum() for n in nats])


# ------------------------------------------------------------------ verbatim
CONDITIONS: tuple[str, ...] = ("repeated", "shuffled", "novel")


def verbatim_trials(seed: int, *, n_trials: int = 24, list_len: int = 6,
                    intervening: Sequence[int] = (0, 40, 120)) -> list[dict]:
    """The verbatim probe's material: for every intervening length and condition, ``n_trials`` trials of
    ``{"condition", "intervening", "first": [nouns], "second": [nouns], "filler": text}`` (deterministic in
    ``seed``; the three conditions of a trial share its first list and filler)."""
    check_seed(seed)
    check_int("verbatim", "n_trials", n_trials)
    check_int("verbatim", "list_len", list_len, minimum=2, meaning="nouns per list")
    if 2 * list_len > len(NOUNS):
        raise ValueError(f"verbatim: list_len={list_len} needs {2 * list_len} distinct nouns (novel condition); "
                         f"there are {len(NOUNS)}: use list_len <= {len(NOUNS) // 2}")
    if any(isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(FILLER) for n in intervening):
        raise ValueError(f"verbatim: intervening lengths must be ints in 0..{len(FILLER)} (characters of filler "
                         f"text), got {list(intervening)}")
    rng = random.Random(seed)
    trials = []
    for length in intervening:
        for _ in range(n_trials):
            nouns = rng.sample(NOUNS, 2 * list_len)
            first, other = nouns[:list_len], nouns[list_len:]
            shuffled = first[:]
            while shuffled == first:
                rng.shuffle(shuffled)
            cut = FILLER[:length].rsplit(" ", 1)[0] + " " if length else ""  # whole words only
            for condition, second in zip(CONDITIONS, (first, shuffled, other)):
                trials.append({"condition": condition, "intervening": length, "first": first, "second": second,
                               "filler": cut.lstrip()})
    return trials


def verbatim_segments(trial: dict) -> list[str]:
    """The trial's text in segments: fixed text, then each noun on its own (separators apart)."""
    segments = ["She wrote down the words: "]
    for i, noun in enumerate(trial["first"]):
        segments += [noun, ", " if i < len(trial["first"]) - 1 else ".\n"]
    segments.append(trial["filler"] + "She read the words again: ")
    for i, noun in enumerate(trial["second"]):
        segments += [noun, ", " if i < len(trial["second"]) - 1 else "."]
    return segments


@torch.no_grad()
def run_verbatim(net, tokenizer, trials: Sequence[dict]) -> list[dict]:
    """Per trial and second-list position: ``{"condition", "intervening", "position", "s1", "s2"}`` in bits."""
    encoded = [encode_segments(tokenizer, verbatim_segments(t)) for t in trials]
    nats = token_nats(net, [ids for ids, _ in encoded])
    rows = []
    for trial, (ids, spans), n in zip(trials, encoded, nats):
        k = len(trial["first"])
        first_spans, second_spans = verbatim_noun_spans(spans, k)
        surprisal = [float(n[a - 1:b - 1].sum()) * BITS for a, b in first_spans + second_spans]  # token i <- nats[i-1]
        s1_of = dict(zip(trial["first"], surprisal[:k]))
        for position, noun in enumerate(trial["second"]):
            reference = s1_of.get(noun, surprisal[position])  # novel: the first-list noun at this position
            rows.append({"condition": trial["condition"], "intervening": trial["intervening"],
                         "position": position + 1, "s1": reference, "s2": surprisal[k + position]})
    return rows


def verbatim_noun_spans(spans: Sequence[tuple[int, int]], list_len: int) -> tuple[list, list]:
    """The token spans of the first and second list's nouns among :func:`verbatim_segments`' spans."""
    return list(spans[1:1 + 2 * list_len:2]), list(spans[2 + 2 * list_len::2])


def summarize_verbatim(rows: Sequence[dict]) -> dict[tuple[str, int], dict]:
    """``{(condition, intervening): {"drop": [mean bits per position], "relative": mean 100 S2/S1, "n"}}``."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["condition"], r["intervening"]), []).append(r)
    summary = {}
    for key, group in sorted(groups.items()):
        positions = sorted({r["position"] for r in group})
        drop = [sum(r["s1"] - r["s2"] for r in group if r["position"] == p) /
                sum(1 for r in group if r["position"] == p) for p in positions]
        relative = sum(100 * r["s2"] / max(r["s1"], 1e-9) for r in group) / len(group)
        summary[key] = {"drop": drop, "relative": relative, "n": len(group) // len(positions)}
    return summary


def verbatim_table(summaries: dict[str, dict]) -> str:
    """Markdown: one row per model, condition and intervening length (``summaries``: ``{model: summary}``)."""
    first = next(iter(summaries.values()))
    positions = len(next(iter(first.values()))["drop"])
    header = ["model", "second list", "intervening chars", *[f"drop @{p + 1}" for p in range(positions)],
              "mean drop (bits)", "S2/S1 %", "trials"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, summary in summaries.items():
        for (condition, length), s in summary.items():
            cells = [model, condition, str(length), *[f"{d:.2f}" for d in s["drop"]],
                     f"{sum(s['drop']) / len(s['drop']):.2f}", f"{s['relative']:.0f}", str(s["n"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verbatim_figure(summaries: dict[str, dict], path: Path) -> Path:
    """Surprisal drop by second-list position: one panel per model, a line per condition and length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from seqmix.apps.files import save_figure

    fig, axes = plt.subplots(1, len(summaries), figsize=(4 * len(summaries), 3.4), sharey=True, squeeze=False)
    styles = {"repeated": "-", "shuffled": "--", "novel": ":"}
    for ax, (model, summary) in zip(axes[0], summaries.items()):
        lengths = sorted({length for _, length in summary})
        colors = dict(zip(lengths, plt.cm.viridis([i / max(1, len(lengths) - 1) * 0.8 for i in range(len(lengths))])))
        for (condition, length), s in summary.items():
            ax.plot(range(1, len(s["drop"]) + 1), s["drop"], styles[condition], color=colors[length],
                    label=f"{condition}, {length} chars")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(model)
        ax.set_xlabel("position in the second list")
    axes[0][0].set_ylabel("surprisal drop, list 1 -> 2 (bits)")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


# ------------------------------------------------------------------ reversal
SYLLABLES = ("vor", "al", "bren", "cal", "dar", "el", "fen", "gor", "hal", "is", "jor", "kel", "lor", "mar", "nor",
             "per", "quin", "ros", "sel", "tor", "ul", "var", "wen", "yor", "zel", "thra", "mib", "dov", "sar", "pell")
ENDINGS = ("an", "ek", "is", "on", "ar", "ius", "eth", "ora", "ix", "wyn", "ald", "uth")
ROLES = ("keeper", "baker", "painter", "founder", "guardian", "mayor", "healer", "builder", "singer", "smith",
         "teacher", "captain")
ADJECTIVES = ("amber", "silent", "frozen", "hidden", "crimson", "golden", "sunken", "northern", "broken", "green",
              "distant", "hollow")
PLACES = ("lighthouse", "valley", "bridge", "tower", "garden", "harbour", "library", "orchard", "mill", "market",
          "island", "chapel")


def reversal_facts(seed: int, n_facts: int = 20) -> list[dict]:
    """``n_facts`` fictitious facts ``{"name": "Vorek Telmar", "description": "the keeper of the amber
    lighthouse"}``, names and descriptions all distinct (deterministic in ``seed``)."""
    check_seed(seed)
    check_int("reversal", "n_facts", n_facts, minimum=2, meaning="facts, e.g. 20 (chance 1 / n_facts)")
    if n_facts > 200:
        raise ValueError(f"reversal: n_facts={n_facts} is more than the word lists give distinct facts for; use <= 200")
    rng = random.Random(seed)
    names: set[str] = set()
    descriptions: set[str] = set()
    facts = []
    while len(facts) < n_facts:
        name = " ".join((rng.choice(SYLLABLES) + rng.choice(ENDINGS)).capitalize() for _ in range(2))
        description = f"the {rng.choice(ROLES)} of the {rng.choice(ADJECTIVES)} {rng.choice(PLACES)}"
        if name in names or description in descriptions:
            continue
        names.add(name)
        descriptions.add(description)
        facts.append({"name": name, "description": description})
    return facts


def fact_text(fact: dict) -> str:
    """The training sentence, A -> B: ``\\nVorek Telmar is the keeper of the amber lighthouse.\\n``."""
    return f"\n{fact['name']} is {fact['description']}.\n"


def fact_batch(tokenizer, facts: Sequence[dict]) -> tuple[Tensor, Tensor, Tensor]:
    """``(inputs [F, T], targets [F, T], key_mask [F, T])`` of the facts' sentences, right-padded (IGNORE_INDEX
    targets, key mask False on the padding)."""
    ids = [tokenizer.encode(fact_text(f)) for f in facts]
    length = max(len(i) for i in ids) - 1
    inputs = torch.zeros(len(ids), length, dtype=torch.long)
    targets = torch.full((len(ids), length), IGNORE_INDEX, dtype=torch.long)
    keys = torch.zeros(len(ids), length, dtype=torch.bool)
    for row, seq in enumerate(ids):
        n = len(seq) - 1
        inputs[row, :n], targets[row, :n], keys[row, :n] = torch.tensor(seq[:-1]), torch.tensor(seq[1:]), True
    return inputs, targets, keys


def fact_names(tokenizer, facts: Sequence[dict], length: int) -> Tensor:
    """``[F, length]`` bool: the positions of each fact's name among :func:`fact_batch`'s inputs."""
    names = torch.zeros(len(facts), length, dtype=torch.bool)
    for row, fact in enumerate(facts):
        _, spans = encode_segments(tokenizer, ["\n", fact["name"], f" is {fact['description']}.\n"])
        names[row, spans[1][0]:min(spans[1][1], length)] = True
    return names


def finetune_on_facts(net, tokenizer, facts: Sequence[dict], *, objective: str, steps: int = 200, lr: float = 1e-3,
                      seed: int = 0, mask_ratio: float = 0.15, span: int = 1, causal_ratio: float = 0.5,
                      name_ratio: float = 0.0) -> BICOObjective | None:
    """Fine-tune ``net`` in place on the facts (every fact in every step): ``next_token`` (causal cross-entropy)
    or ``bico`` (:class:`BICOObjective`, returned, its mask vector trained too; ``name_ratio`` is its
    ``segment_ratio`` with the facts' names as segments). Deterministic in ``seed``."""
    if objective not in ("next_token", "bico"):
        raise ValueError(f"reversal: objective={objective!r} is unknown; choose 'next_token' or 'bico'")
    check_int("reversal", "steps", steps, meaning="fine-tuning steps")
    torch.manual_seed(seed)
    bico = (BICOObjective(net.embed.embedding_dim, mask_ratio=mask_ratio, span=span, causal_ratio=causal_ratio,
                          segment_ratio=name_ratio) if objective == "bico" else None)
    params = list(net.parameters()) + (list(bico.parameters()) if bico is not None else [])
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    inputs, targets, keys = fact_batch(tokenizer, facts)
    names = fact_names(tokenizer, facts, inputs.shape[1])
    net.train()
    for _ in range(steps):
        if bico is None:
            loss = causal_loss(net, inputs, targets)
        else:
            loss = bico(net, inputs, targets, generator=generator, key_mask=keys, segments=names)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    net.eval()
    return bico


@torch.no_grad()
def reversal_accuracy(net, tokenizer, facts: Sequence[dict], *, bidirectional: bool = False) -> dict:
    """``{"a_to_b": accuracy, "b_to_a": accuracy, "chance": 1 / n}``: multiple choice among every fact's
    description (A->B) or name (B->A) by summed log-likelihood (module docstring), causal or in BICO's mode."""
    descriptions = [tokenizer.encode(f" {f['description']}.") for f in facts]
    names = [tokenizer.encode(f" {f['name']}.") for f in facts]
    right = {"a_to_b": 0, "b_to_a": 0}
    for i, fact in enumerate(facts):
        forward = choice_scores(net, tokenizer.encode(f"\n{fact['name']} is"), descriptions,
                                bidirectional=bidirectional)
        backward = choice_scores(net, tokenizer.encode(f"\n{fact['description']} is"), names,
                                 bidirectional=bidirectional)
        right["a_to_b"] += int(forward.argmin()) == i
        right["b_to_a"] += int(backward.argmin()) == i
    return {k: v / len(facts) for k, v in right.items()} | {"chance": 1 / len(facts)}


# ------------------------------------------------------------------ JRT
def jrt_trials(seed: int, *, n_trials: int = 20, n_pairs: int = 8) -> list[dict]:
    """``n_trials`` trials ``{"pairs": [[key, value], ...], "queries": [key indices]}`` (every key queried once;
    values distinct two-digit numbers; deterministic in ``seed``)."""
    check_seed(seed)
    check_int("jrt", "n_trials", n_trials)
    check_int("jrt", "n_pairs", n_pairs, minimum=2, meaning="key-value pairs, e.g. 8 (chance 1 / n_pairs)")
    if n_pairs > len(NOUNS):
        raise ValueError(f"jrt: n_pairs={n_pairs} exceeds the {len(NOUNS)} keys; use n_pairs <= {len(NOUNS)}")
    rng = random.Random(seed)
    trials = []
    for _ in range(n_trials):
        keys = rng.sample(NOUNS, n_pairs)
        values = rng.sample(range(10, 100), n_pairs)
        queries = list(range(n_pairs))
        rng.shuffle(queries)
        trials.append({"pairs": [[k, str(v)] for k, v in zip(keys, values)], "queries": queries})
    return trials


def jrt_context(trial: dict, reads: int) -> str:
    """The pairs as text, ``reads`` times: ``crown 41, sword 17, ... ring 66.\\n`` (JRT-Prompt repeats it)."""
    once = ", ".join(f"{k} {v}" for k, v in trial["pairs"]) + ".\n"
    return once * reads


@torch.no_grad()
def run_jrt(net, tokenizer, trials: Sequence[dict], reads: int) -> float:
    """Accuracy of recalling each queried key's value (multiple choice among the trial's values)."""
    right = total = 0
    for trial in trials:
        context = jrt_context(trial, reads)
        values = [tokenizer.encode(f" {v}") for _, v in trial["pairs"]]
        for q in trial["queries"]:
            prompt = tokenizer.encode(context + trial["pairs"][q][0])
            right += int(choice_scores(net, prompt, values).argmin()) == q
            total += 1
    return right / total


@dataclass
class ProbeFiles:
    """Where a probe writes: its material, its table, its figure."""

    material: Path
    table: Path
    figure: Path

    @classmethod
    def under(cls, folder: Path, name: str) -> "ProbeFiles":
        return cls(folder / f"{name}_material.jsonl", folder / f"{name}.md", folder / f"{name}.png")


# ------------------------------------------------------------------ reversal experiment, tables, figures
def reversal_experiment(module_factory, tokenizer, *, seeds: Sequence[int], objectives: Sequence[str],
                        steps: int, n_facts: int, folder: Path | None = None, lr: float = 1e-3,
                        mask_ratio: float = 0.15, span: int = 1, causal_ratio: float = 0.5,
                        name_ratio: float = 0.0) -> list[dict]:
    """For each seed: the facts (written to ``folder/reversal_facts_seed<s>.jsonl`` when given), then for each
    objective a fresh copy of the base network (``module_factory()``) fine-tuned on them and asked both ways.
    Rows ``{"seed", "objective", "mode", "a_to_b", "b_to_a", "chance"}``; BICO rows in both scoring modes."""
    rows = []
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        facts = reversal_facts(seed, n_facts)
        if folder is not None:
            write_jsonl(folder / f"reversal_facts_seed{seed}.jsonl", facts)
        for objective in objectives:
            net = module_factory().net
            bico = finetune_on_facts(net, tokenizer, facts, objective=objective, steps=steps, seed=seed, lr=lr,
                                     mask_ratio=mask_ratio, span=span, causal_ratio=causal_ratio,
                                     name_ratio=name_ratio)
            for mode in ("causal",) + (("bidirectional",) if bico is not None else ()):
                rows.append({"seed": seed, "objective": objective, "mode": mode,
                             **reversal_accuracy(net, tokenizer, facts, bidirectional=mode == "bidirectional")})
    return rows


def chance_tail(right: int, asked: int, chance: float) -> float:
    """``P(X >= right)`` for ``X ~ Binomial(asked, chance)``: how often guessing alone gets ``right`` or more."""
    return sum(math.comb(asked, k) * chance ** k * (1 - chance) ** (asked - k) for k in range(right, asked + 1))


def reversal_table(rows: Sequence[dict]) -> str:
    """Markdown: mean (and per-seed) accuracy A->B and B->A per objective and scoring mode, with chance; the B->A
    right answers over all seeds and the probability that guessing gets as many (:func:`chance_tail`)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["objective"], r["mode"]), []).append(r)
    lines = ["| fine-tuning | scored | A->B mean | B->A mean | A->B per seed | B->A per seed | chance | "
             "B->A right / asked | P(guessing gets as many) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (objective, mode), group in groups.items():
        ab = [r["a_to_b"] for r in group]
        ba = [r["b_to_a"] for r in group]
        chance = group[0]["chance"]
        n_facts = round(1 / chance)
        right, asked = sum(round(b * n_facts) for b in ba), n_facts * len(ba)
        lines.append(f"| {objective} | {mode} | {sum(ab) / len(ab):.3f} | {sum(ba) / len(ba):.3f} | "
                     f"{' / '.join(f'{a:.2f}' for a in ab)} | {' / '.join(f'{b:.2f}' for b in ba)} | "
                     f"{chance:.3f} | {right} / {asked} | {chance_tail(right, asked, chance):.3f} |")
    return "\n".join(lines) + "\n"


def reversal_figure(rows: Sequence[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from seqmix.apps.files import save_figure

    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(f"{r['objective']}\n({r['mode']})", []).append(r)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(groups), 3.2))
    for i, (label, group) in enumerate(groups.items()):
        for j, (key, color) in enumerate((("a_to_b", "tab:blue"), ("b_to_a", "tab:orange"))):
            values = [r[key] for r in group]
            ax.bar(i + 0.2 * (2 * j - 1), sum(values) / len(values), 0.38, color=color,
                   label=("A->B" if key == "a_to_b" else "B->A") if i == 0 else None)
            ax.plot([i + 0.2 * (2 * j - 1)] * len(values), values, "k.", ms=3)
    ax.axhline(rows[0]["chance"], color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(range(len(groups)), list(groups), fontsize=7)
    ax.set_ylabel("accuracy (mean of seeds; dots: seeds)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def jrt_table(results: dict[str, dict[int, float]], chance: float) -> str:
    lines = ["| model | read once | read twice | chance |", "|---|---|---|---|"]
    for model, acc in results.items():
        lines.append(f"| {model} | {acc[1]:.3f} | {acc[2]:.3f} | {chance:.3f} |")
    return "\n".join(lines) + "\n"


def jrt_figure(results: dict[str, dict[int, float]], chance: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from seqmix.apps.files import save_figure

    fig, ax = plt.subplots(figsize=(1.8 + 1.2 * len(results), 3.0))
    for i, acc in enumerate(results.values()):
        ax.bar(i - 0.2, acc[1], 0.38, color="tab:blue", label="read once" if i == 0 else None)
        ax.bar(i + 0.2, acc[2], 0.38, color="tab:green", label="read twice" if i == 0 else None)
    ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(range(len(results)), list(results), fontsize=8)
    ax.set_ylabel("recall accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


# ------------------------------------------------------------------ the command
TRAIN_HINT = "train one with `seqmix lm fit --config configs/lm/probe_small.yaml`"


def probe_command(argv: list[str]) -> int:
    """``seqmix lm probe verbatim|reversal|jrt --ckpt <ckpt> [--out DIR] [--seed S] ...`` (module docstring)."""
    import argparse

    from seqmix.apps.lm.module import LanguageModel
    from seqmix.apps.module import load_trained

    parser = argparse.ArgumentParser(prog="seqmix lm probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=PROBES, help="which probe")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `seqmix lm fit` (reversal: the base model)")
    parser.add_argument("--out", default=None, help="folder of the material, table and figure (default: probes/ "
                                                    "beside the checkpoint's folder)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated material (verbatim, jrt)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="reversal: seeds (default 0 1 2)")
    parser.add_argument("--finetune", nargs="+", choices=("next_token", "bico"), default=["next_token", "bico"],
                        help="reversal: the fine-tuning objectives compared (default both)")
    parser.add_argument("--steps", type=int, default=200, help="reversal: fine-tuning steps (default 200)")
    parser.add_argument("--n-facts", type=int, default=20, help="reversal: facts (chance 1 / n; default 20)")
    parser.add_argument("--trials", type=int, default=None, help="verbatim / jrt: trials (default 24 / 20)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    module, _ = load_trained(LanguageModel, args.ckpt, "lm", TRAIN_HINT)
    tokenizer = module.tokenizer
    folder = Path(args.out) if args.out is not None else Path(args.ckpt).resolve().parent.parent / "probes"
    folder.mkdir(parents=True, exist_ok=True)
    files = ProbeFiles.under(folder, args.name)
    label = Path(args.ckpt).name
    if args.name == "verbatim":
        trials = verbatim_trials(args.seed, **({} if args.trials is None else {"n_trials": args.trials}))
        write_jsonl(files.material, trials)
        summaries = {label: summarize_verbatim(run_verbatim(module.net, tokenizer, trials))}
        table = verbatim_table(summaries)
        verbatim_figure(summaries, files.figure)
    elif args.name == "jrt":
        trials = jrt_trials(args.seed, **({} if args.trials is None else {"n_trials": args.trials}))
        write_jsonl(files.material, trials)
        results = {label: {reads: run_jrt(module.net, tokenizer, trials, reads) for reads in (1, 2)}}
        chance = 1 / len(trials[0]["pairs"])
        table = jrt_table(results, chance)
        jrt_figure(results, chance, files.figure)
    else:
        rows = reversal_experiment(lambda: load_trained(LanguageModel, args.ckpt, "lm", TRAIN_HINT)[0], tokenizer,
                                   seeds=args.seeds, objectives=args.finetune, steps=args.steps,
                                   n_facts=args.n_facts, folder=folder)
        write_jsonl(files.material, rows)
        table = reversal_table(rows)
        reversal_figure(rows, files.figure)
    atomic_write(files.table, lambda tmp: tmp.write_text(f"# seqmix lm probe {args.name} --ckpt {args.ckpt}\n\n{table}"))
    print(table + f"\nseqmix lm probe {args.name}: {files.table}, {files.figure}, {files.material}")
    return 0
