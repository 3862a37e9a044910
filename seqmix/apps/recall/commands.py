"""``seqmix recall generate --ckpt <ckpt>``: answer MQAR queries by decoding with the trained model.

Each query of an MQAR example is a prompt (the sequence up to and including the queried key),
continued by one token with :func:`seqmix.core.decoding.generate`: the prompt is prefilled
with one forward that returns every mixer's state (KV cache or recurrent state), and the
decoded token is the answer. Prompts of equal length (queries at the same position in
different examples) are decoded as one batch.

Prints, per example, how many answers the decoding got right and how many the argmax of one
full forward over the whole sequence got right (the ``test`` metric), then the totals and how
many decoded answers equal the forward's argmax: with ``--strategy greedy`` all of them, or
the command fails (a mixer whose prefill differs from its forward). The examples are the
first ``--examples`` of the checkpoint's test split (``--data_seed`` draws others), built by the
checkpoint's datamodule settings (its JRT-Prompt ``read_twice`` included).
"""

from __future__ import annotations

import argparse

import torch

from seqmix.apps.module import load_trained
from seqmix.apps.recall.data import IGNORE_INDEX, MQARBatch, MQARDataModule, repeated_part
from seqmix.apps.recall.model import RecallLM
from seqmix.core.decoding import STRATEGIES, generate

TRAIN_HINT = "train one with `seqmix recall fit --config configs/recall/softmax.yaml` (the `make demo` model)"
TEST_SPLIT_OFFSET = 2  # MQARDataModule seeds its test split with seed * 1000 + 2


def answer_queries(model, batch: MQARBatch, *, strategy: str, temperature: float, top_k: int | None,
                   top_p: float | None, seed: int | None, num_beams: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(decoded, forward)`` answers ``[N, T]`` (``IGNORE_INDEX`` off the queries): one token decoded
    from each query's prompt, and the argmax of one full forward over every sequence."""
    inputs, targets = batch.inputs, batch.targets  # [N, T] each
    queried = targets != IGNORE_INDEX  # [N, T]
    with torch.no_grad():
        forward = model(inputs).argmax(-1).masked_fill(~queried, IGNORE_INDEX)  # [N, T, V] -> [N, T]
        decoded = torch.full_like(targets, IGNORE_INDEX)
        for position in queried.any(0).nonzero()[:, 0].tolist():
            rows = queried[:, position].nonzero()[:, 0]  # the examples with a query here
            out = generate(model, inputs[rows, : position + 1], max_new_tokens=1, strategy=strategy,
                           temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, num_beams=num_beams)
            decoded[rows, position] = out.tokens[:, 0]
    return decoded, forward


def generate_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqmix recall generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `seqmix recall fit`")
    parser.add_argument("--examples", type=int, default=16, help="MQAR examples to answer (default 16)")
    parser.add_argument("--data_seed", type=int, default=None,
                        help="draw the examples with this seed (default: the checkpoint's test split)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="greedy", help="decoding strategy (default greedy)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (--strategy sample)")
    parser.add_argument("--top_k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top_p", type=float, default=None, help="sample within the top-p nucleus")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the sampling generator (--strategy sample; default: torch's global one)")
    parser.add_argument("--num_beams", type=int, default=None, help="beams (--strategy beam; default 4)")
    args = parser.parse_args(argv)
    if args.examples < 1:
        raise ValueError(f"--examples must be >= 1, got {args.examples}")
    model, checkpoint = load_trained(RecallLM, args.ckpt, "recall", TRAIN_HINT, needs=("datamodule_hyper_parameters",))
    data = {k: v for k, v in checkpoint["datamodule_hyper_parameters"].items() if k != "_instantiator"}
    data_seed = data["seed"] * 1000 + TEST_SPLIT_OFFSET if args.data_seed is None else args.data_seed
    datamodule = MQARDataModule(**data)  # the examples as fit drew them (lengths, JRT-Prompt's repeated context)
    batch = datamodule.examples(args.examples, data["num_kv_pairs"], seed=data_seed)
    decoded, forward = answer_queries(model, batch, strategy=args.strategy, temperature=args.temperature,
                                      top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                      num_beams=(4 if args.strategy == "beam" else 1) if args.num_beams is None
                                      else args.num_beams)
    queried = batch.targets != IGNORE_INDEX  # [N, T]
    decoded_right = ((decoded == batch.targets) & queried).sum(1)  # [N]
    forward_right = ((forward == batch.targets) & queried).sum(1)  # [N]
    per_example = queried.sum(1)  # [N]
    mixer = type(model.stack.blocks[0].mixer).__name__
    read = {"none": "", "context": ", context read twice",
            "prompt": ", whole prompt read twice"}[repeated_part(datamodule.hparams.read_twice)]
    print(f"seqmix recall generate: {args.examples} MQAR examples (T={datamodule.seq_len}, {data['num_kv_pairs']} "
          f"pairs{read}, seed {data_seed}), {mixer} model, strategy {args.strategy}")
    for n in range(args.examples):
        print(f"example {n:3d}: decoded {int(decoded_right[n])}/{int(per_example[n])}, "
              f"full-forward argmax {int(forward_right[n])}/{int(per_example[n])}")
    total = int(per_example.sum())
    agree = int(((decoded == forward) & queried).sum())
    print(f"accuracy: decoded {int(decoded_right.sum()) / total:.4f}, full-forward argmax "
          f"{int(forward_right.sum()) / total:.4f} ({total} queries); decoded = forward argmax on {agree}/{total}")
    if args.strategy == "greedy" and agree != total:
        print(f"seqmix recall generate: error: greedy decoding differs from the full forward's argmax on "
              f"{total - agree} queries: the model's mixer steps differently from its forward")
        return 1
    return 0
