"""``seqmix lm generate --ckpt <ckpt> --prompt "..."``: continue a prompt with a trained language model.

The prompt is encoded with the checkpoint's own tokenizer (every checkpoint carries it; ``--tokenizer`` may
name the run's ``tokenizer.json`` instead, which must be the same one), prefilled by one forward, then
continued token by token through each mixer's ``step`` by :func:`seqmix.core.decoding.generate`, the one
generation loop (a KV cache for attention, a constant-size state for recurrent mixers). Tokens are printed as
they come (the loop's ``stop`` hook sees each one; bytes of a character split across tokens are held until
it is whole); the prompt is echoed first. At the end a line on standard error gives the tokens per second
(prefill included).

Refused with one line each: an empty prompt; a prompt with characters the model never saw in training (the
byte vocabulary encodes any text, but those bytes' embeddings are untrained: ``--allow-unseen`` goes on
anyway); more tokens than a model with learned positions has (``max_len``, the training context: prompt
plus ``--max-new-tokens``; rotary and position-free models have no such limit); a ``--tokenizer`` file that
is not the checkpoint's; a checkpoint of another app.
"""

from __future__ import annotations

import argparse
import codecs
import sys
import time

import torch

from seqmix.apps.files import input_file
from seqmix.apps.lm.module import LanguageModel
from seqmix.apps.lm.tokenizer import Tokenizer, tokenizer_from_json
from seqmix.apps.module import load_trained
from seqmix.core.decoding import generate

TRAIN_HINT = "train one with `seqmix lm fit --config configs/lm/shakespeare_char.yaml`"


def check_tokenizer_file(path: str, tokenizer: Tokenizer, ckpt: str) -> None:
    """``--tokenizer``: a tokenizer file that is the checkpoint's own, or a one-line ``ValueError``."""
    file = input_file(path, "--tokenizer", "give the tokenizer.json of the run that wrote the checkpoint, or leave "
                                           "--tokenizer out (the checkpoint carries its tokenizer)")
    given = tokenizer_from_json(file.read_text(), f"--tokenizer {file}")
    if given.fingerprint != tokenizer.fingerprint:
        raise ValueError(f"--tokenizer {file} ({given.describe()}, sha256 {given.fingerprint[:12]}) is not the tokenizer "
                         f"of {ckpt} ({tokenizer.describe()}, sha256 {tokenizer.fingerprint[:12]}); give that run's "
                         f"tokenizer.json or leave --tokenizer out")


def check_nonempty(prompt: str) -> None:
    if not prompt:
        raise ValueError("--prompt is empty; give at least one character to continue, e.g. --prompt 'ROMEO:'")


def check_prompt(ids: list[int], tokenizer: Tokenizer, allow_unseen: bool) -> None:
    unseen = [i for i in dict.fromkeys(ids) if i in tokenizer.unseen]
    if unseen and not allow_unseen:
        table = tokenizer.token_bytes
        shown = ", ".join(f"{table[i].decode('utf-8', errors='replace')!r} ({table[i].hex(' ')})" for i in unseen[:5])
        raise ValueError(f"--prompt holds text the model never saw in training: {shown}; the {tokenizer.kind} "
                         f"vocabulary encodes any text as UTF-8 bytes, but these tokens' embeddings are untrained: "
                         f"remove them, or pass --allow-unseen to continue anyway")


def check_length(prompt_tokens: int, max_new_tokens: int, limit: int | None) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if limit is not None and prompt_tokens + max_new_tokens > limit:
        room = limit - prompt_tokens
        fix = f"give --max-new-tokens {room} or less" if room >= 1 else "shorten the prompt"
        raise ValueError(f"the prompt's {prompt_tokens} tokens and --max-new-tokens {max_new_tokens} exceed the "
                         f"model's {limit} learned positions (max_len, its training context); {fix} (models with "
                         f"positions: rotary or none have no such limit)")


class Stream:
    """The ``stop`` hook of :func:`generate` that prints each new token's text as it comes and never stops."""

    def __init__(self, tokenizer: Tokenizer, out) -> None:
        self.table, self.out = tokenizer.token_bytes, out
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # holds a character's partial bytes

    def __call__(self, generated: torch.Tensor) -> torch.Tensor:
        self.out.write(self.utf8.decode(self.table[int(generated[0, -1])]))
        self.out.flush()
        return torch.zeros(generated.shape[0], dtype=torch.bool)

    def close(self) -> None:
        self.out.write(self.utf8.decode(b"", final=True) + "\n")
        self.out.flush()


def generate_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqmix lm generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `seqmix lm fit`")
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default 200)")
    parser.add_argument("--strategy", choices=("sample", "greedy"), default="sample",
                        help="sample (default) or greedy (the most likely token)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="sample within the top-p nucleus")
    parser.add_argument("--seed", type=int, default=None, help="seed of the sampling generator")
    parser.add_argument("--tokenizer", default=None,
                        help="the run's tokenizer.json, checked against the checkpoint's (default: the checkpoint's)")
    parser.add_argument("--allow-unseen", action="store_true",
                        help="continue a prompt with characters the model never saw in training")
    args = parser.parse_args(argv)
    check_nonempty(args.prompt)  # before reading the checkpoint: nothing to continue
    module, _ = load_trained(LanguageModel, args.ckpt, "lm", TRAIN_HINT)
    tokenizer = module.tokenizer
    if args.tokenizer is not None:
        check_tokenizer_file(args.tokenizer, tokenizer, args.ckpt)
    ids = tokenizer.encode(args.prompt)
    check_prompt(ids, tokenizer, args.allow_unseen)
    check_length(len(ids), args.max_new_tokens, module.net.max_positions)
    sampling = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
    stream = Stream(tokenizer, sys.stdout)
    sys.stdout.write(args.prompt)
    start = time.perf_counter()
    out = generate(module.net, torch.tensor([ids]), max_new_tokens=args.max_new_tokens, strategy=args.strategy,
                   stop=stream, **sampling)
    seconds = time.perf_counter() - start
    stream.close()
    made = int(out.lengths[0])
    mixers = sorted({type(block.mixer).__name__ for block in module.net.stack.blocks})
    print(f"seqmix lm generate: {made} tokens in {seconds:.2f} s ({made / seconds:.1f} tokens/s, prefill of "
          f"{len(ids)} prompt tokens included; {'+'.join(mixers)}, {tokenizer.kind} tokenizer, {args.strategy})",
          file=sys.stderr)
    return 0
