"""Multi-query associative recall (MQAR), the synthetic task of Zoology (Arora et al. 2023).

A sequence first lists ``num_kv_pairs`` key-value pairs ``k1 v1 k2 v2 ...``, then, in the
rest of the sequence, each key comes back once as a query; the model must output the
value paired with that key at the query's position. Everything else is filler.

Layout of one example (``P = num_kv_pairs``, ``T = seq_len``)::

    position   0   1   2   3  ...  2P-2 2P-1 | 2P ... T-1
    token      k1  v1  k2  v2 ...  kP   vP   | filler, with key k_i at position 2P + 2 g_i
    target     -   -   -   -  ...  -    -    | v_i at position 2P + 2 g_i, ignore elsewhere

Keys come from the lower half of the vocabulary ``[1, V/2)`` and values from the upper
half ``[V/2, V)``; within an example keys are distinct (values too). The query slot
``g_i`` is drawn without replacement from ``{0, ..., S-1}`` with ``S = (T - 2P) // 2``
slots and probability ``p(g) ~ (g + 1) ** (power_a - 1)``: a power law, so that most
queries come soon after the key-value block and a few come late (Zoology's ``power_a``,
0.01 by default). Filler tokens are drawn uniformly from the whole vocabulary, as in
Zoology's ``random_non_queries``; their targets are ignored.

Zoology trains on a mixture of settings, most of them easier than the test setting (many
examples with 4 pairs, fewer with 8, 16, ...): the induction mechanism is learned on the
easy ones and carries over. ``train_kv_pairs`` does the same at one sequence length: the
training examples are split evenly over those pair counts, while validation and test use
``num_kv_pairs`` alone.

JRT-Prompt (Arora et al. 2024, "Just read twice", Sec. 3.2): the paper repeats the prompt before
the answer, ``A(C, Q, C, Q)`` for a context ``C`` and a question ``Q``, so that in its second
reading of ``C`` a recurrent model knows the whole context (and the question). ``read_twice``
chooses what an MQAR example repeats (``C`` = the key-value block, ``Q`` = the filler and queries):

- ``False``: read once, ``C Q``.
- ``True`` or ``"context"``: the key-value block alone is repeated, ``C C Q``:
  ``k1 v1 .. kP vP k1 v1 .. kP vP | filler and queries``. The example grows by ``2P`` and every
  query and target moves ``2P`` positions later. The datamodule keeps one length for every example,
  ``seq_len + 2 * max(pair counts)``: an example with fewer pairs draws its queries over
  ``2 * (max - P)`` more positions. (``True`` is kept for the configs and checkpoints written
  before ``"prompt"`` existed.)
- ``"prompt"``: the whole example is repeated, ``C Q C Q``, the paper's equation: the first copy
  of the queries has no targets (their values are never in the input, so nothing is given away)
  and the second copy, ``seq_len`` positions later, is scored. Every example is ``2 * seq_len``.

In both repeated forms the first copy has no targets. The datamodule's ``seq_len`` attribute is the
length after repeating, which the CLI links to the model's ``max_len``. Left out: the paper's
question-first variants of its released prompts (e.g. SQuAD's ``Q C C Q``) and repeating more
than twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from seqmix.apps.data import Split, SplitLoaders

IGNORE_INDEX = -100
ReadTwice = bool | Literal["context", "prompt"]  # False: read once; True == "context" (module docstring)


def repeated_part(read_twice: ReadTwice) -> Literal["none", "context", "prompt"]:
    """What JRT-Prompt repeats for a ``read_twice`` setting: ``"none"``, ``"context"`` or ``"prompt"``."""
    if read_twice is False:
        return "none"
    if read_twice is True or read_twice == "context":
        return "context"
    if read_twice == "prompt":
        return "prompt"
    raise ValueError(f"MQAR: read_twice={read_twice!r} is not a JRT-Prompt setting; use false (read once), "
                     "true or 'context' (the key-value block repeated, C C Q) or 'prompt' (the whole example "
                     "repeated, C Q C Q)")


@dataclass(frozen=True)
class MQARBatch:
    """``inputs``, ``targets``: ``[N, T]`` int64; ``targets`` is ``IGNORE_INDEX`` off the queries."""

    inputs: Tensor
    targets: Tensor


def check_mqar_settings(vocab_size: int, seq_len: int, num_kv_pairs: int, power_a: float) -> None:
    """Fail with a message naming the setting and the fix when no MQAR example can be built."""
    if num_kv_pairs < 1:
        raise ValueError(f"MQAR: num_kv_pairs must be >= 1, got {num_kv_pairs}")
    n_keys, n_values = vocab_size // 2 - 1, vocab_size - vocab_size // 2
    if min(n_keys, n_values) < num_kv_pairs:
        raise ValueError(
            f"MQAR: vocab_size={vocab_size} gives {n_keys} keys and {n_values} values, too few for "
            f"num_kv_pairs={num_kv_pairs} distinct pairs; use vocab_size >= {2 * num_kv_pairs + 2}"
        )
    if seq_len < 4 * num_kv_pairs:
        raise ValueError(
            f"MQAR: seq_len={seq_len} is too short for num_kv_pairs={num_kv_pairs}: the pairs take "
            f"{2 * num_kv_pairs} positions and the queries need {num_kv_pairs} slots of 2 after them; "
            f"use seq_len >= {4 * num_kv_pairs} or fewer pairs"
        )
    if not 0.0 < power_a <= 1.0:
        raise ValueError(f"MQAR: power_a must be in (0, 1] (1 = uniform gaps), got {power_a}")


def query_slot_probs(n_slots: int, power_a: float) -> Tensor:
    """``p(g) ~ (g + 1) ** (power_a - 1)`` over ``g = 0..n_slots-1``, summing to 1: ``[n_slots]``."""
    p = torch.arange(1, n_slots + 1, dtype=torch.float64) ** (power_a - 1.0)
    return p / p.sum()


def generate_mqar(num_examples: int, *, vocab_size: int, seq_len: int, num_kv_pairs: int,
                  power_a: float = 0.01, seed: int = 0, read_twice: ReadTwice = False) -> MQARBatch:
    """``num_examples`` MQAR sequences, a pure function of its arguments (``seed`` included).

    ``read_twice`` (JRT-Prompt): the same examples with the ``2 * num_kv_pairs`` context tokens repeated
    in front (``True`` / ``"context"``, ``[N, seq_len + 2P]``) or the whole example repeated (``"prompt"``,
    ``[N, 2 * seq_len]``); the first copy has no targets.
    """
    repeated = repeated_part(read_twice)
    check_mqar_settings(vocab_size, seq_len, num_kv_pairs, power_a)
    if num_examples < 1:
        raise ValueError(f"MQAR: num_examples must be >= 1, got {num_examples}")
    gen = torch.Generator().manual_seed(seed)
    n, p, half = num_examples, num_kv_pairs, vocab_size // 2

    # Distinct keys from [1, V/2) and distinct values from [V/2, V), per example.
    keys = torch.rand(n, half - 1, generator=gen).argsort(dim=1)[:, :p] + 1  # [N, P]
    values = torch.rand(n, vocab_size - half, generator=gen).argsort(dim=1)[:, :p] + half  # [N, P]
    kv = torch.stack((keys, values), dim=2).reshape(n, 2 * p)  # [N, P, 2] -> [N, 2P]: k1 v1 k2 v2 ...

    # Filler everywhere after the pairs, then each key at its query slot.
    inputs = torch.randint(0, vocab_size, (n, seq_len), generator=gen)  # [N, T]
    inputs[:, : 2 * p] = kv
    n_slots = (seq_len - 2 * p) // 2
    probs = query_slot_probs(n_slots, power_a).expand(n, n_slots)  # [N, S]
    slots = torch.multinomial(probs, p, replacement=False, generator=gen)  # [N, P], distinct per row
    query_pos = 2 * p + 2 * slots  # [N, P]
    inputs.scatter_(1, query_pos, keys)
    targets = torch.full((n, seq_len), IGNORE_INDEX, dtype=torch.long)  # [N, T]
    targets.scatter_(1, query_pos, values)
    if repeated == "context":
        inputs = torch.cat((kv, inputs), 1)  # [N, 2P + T]: the pairs, then the example (which starts with them)
        targets = torch.cat((torch.full_like(kv, IGNORE_INDEX), targets), 1)  # [N, 2P + T]
    elif repeated == "prompt":
        inputs = torch.cat((inputs, inputs), 1)  # [N, 2T]: the example read once without targets, then again
        targets = torch.cat((torch.full_like(targets, IGNORE_INDEX), targets), 1)  # [N, 2T]
    return MQARBatch(inputs, targets)


class MQARDataModule(SplitLoaders):
    """Train / val / test MQAR splits generated in ``setup`` from one seed (each split its own stream).

    ``vocab_size`` and ``seq_len`` are read by the model through the CLI's links; with ``read_twice`` the
    ``seq_len`` attribute is the longer length: ``seq_len + 2 * max(pair counts)`` when the context is
    repeated, ``2 * seq_len`` when the whole example is.
    """

    def __init__(self, vocab_size: int = 256, seq_len: int = 64, num_kv_pairs: int = 4, power_a: float = 0.01,
                 num_train: int = 20_000, num_val: int = 1_000, num_test: int = 1_000, seed: int = 0,
                 batch_size: int = 64, num_workers: int = 0, train_kv_pairs: list[int] | None = None,
                 read_twice: ReadTwice = False):
        """``train_kv_pairs``: pair counts the training examples are spread over (default: ``num_kv_pairs`` only).
        ``read_twice``: JRT-Prompt, ``true`` / ``"context"`` repeats the key-value context before the queries,
        ``"prompt"`` repeats the whole example (module docstring)."""
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        repeated = repeated_part(read_twice)
        check_mqar_settings(vocab_size, seq_len, num_kv_pairs, power_a)
        for pairs in train_kv_pairs or []:
            check_mqar_settings(vocab_size, seq_len, pairs, power_a)
        if train_kv_pairs is not None and len(train_kv_pairs) == 0:
            raise ValueError("MQARDataModule: train_kv_pairs is empty; give pair counts such as [4, 8, 16] "
                             "or leave it unset to train on num_kv_pairs alone")
        for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if value < 1:
                raise ValueError(f"MQARDataModule: {name} must be >= 1, got {value}")
        self.save_hyperparameters()
        self.vocab_size = vocab_size
        longest_context = 2 * max([num_kv_pairs, *(train_kv_pairs or [])])
        self.seq_len = {"none": seq_len, "context": seq_len + longest_context, "prompt": 2 * seq_len}[repeated]
        self.splits: dict[str, TensorDataset] = {}

    def _make(self, split: str, count: int, offset: int) -> TensorDataset:
        h = self.hparams
        pair_counts = h.train_kv_pairs if split == "train" and h.train_kv_pairs else [h.num_kv_pairs]
        shares = [count // len(pair_counts) + (i < count % len(pair_counts)) for i in range(len(pair_counts))]
        parts = [self.examples(share, pairs, seed=h.seed * 1000 + offset + 100 * i)
                 for i, (pairs, share) in enumerate(zip(pair_counts, shares)) if share > 0]
        inputs = torch.cat([part.inputs for part in parts])  # [N, T]
        targets = torch.cat([part.targets for part in parts])  # [N, T]
        return TensorDataset(inputs, targets)

    def examples(self, count: int, num_kv_pairs: int, *, seed: int) -> MQARBatch:
        """``count`` examples with ``num_kv_pairs`` pairs, each ``self.seq_len`` long: ``[count, seq_len]``."""
        h = self.hparams
        # the length before repeating: the context-repeated form gives a shorter context's queries more room
        length = self.seq_len - 2 * num_kv_pairs if repeated_part(h.read_twice) == "context" else h.seq_len
        return generate_mqar(count, vocab_size=h.vocab_size, seq_len=length, num_kv_pairs=num_kv_pairs,
                             power_a=h.power_a, seed=seed, read_twice=h.read_twice)

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        wanted = {"train": (h.num_train, 0), "val": (h.num_val, 1), "test": (h.num_test, 2)}
        for split, (count, offset) in wanted.items():
            if split not in self.splits:
                self.splits[split] = self._make(split, count, offset)
        self.splits["predict"] = self.splits["test"]

    def split_data(self, split: Split) -> TensorDataset:
        if split not in self.splits:
            raise RuntimeError(f"MQARDataModule: call setup() before asking for the {split} loader")
        return self.splits[split]
