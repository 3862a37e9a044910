"""The language model's tokenisers: raw bytes (a vocabulary of 256) and a byte-level BPE.

Both work on the UTF-8 bytes of the text, so *any* text encodes: there is no character outside the
vocabulary. ``bytes`` maps each byte to its value; ``bpe`` is a byte-level BPE (GPT-2's scheme) that the
``tokenizers`` library trains on the training split, with the 256 bytes as its initial alphabet, so
every byte stays a token of its own beside the merges.

What a model cannot use is a token it never saw in training: its embedding is the untrained
initialisation. Every tokenizer therefore records the tokens that never occur in its training text
(``unseen``), and ``seqmix lm generate`` refuses a prompt that holds them (``--allow-unseen`` overrides).

A tokenizer is one JSON document (``to_json``; the run's ``tokenizer.json``; the model's
``tokenizer_json`` hyper-parameter, so every checkpoint carries it)::

    {"format": "seqmix-lm-tokenizer/1", "kind": "bytes" | "bpe", "vocab_size": V,
     "unseen": [token ids never in the training text], "bpe": <the tokenizers library's JSON> | null}

``fingerprint`` is the sha256 of its canonical form: two tokenizers that encode alike have the same one,
whatever the file's layout.

Bits per byte: ``token_bytes[i]`` is the number of UTF-8 bytes token ``i`` stands for (1 for every
byte token), so a model's total nats over a text divided by the text's bytes and by ln 2 compares
tokenisers (:func:`seqmix.apps.lm.metrics.bits_per_byte`).
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from typing import Iterable, Literal, Sequence

import torch

TokenizerKind = Literal["bytes", "bpe"]
FORMAT = "seqmix-lm-tokenizer/1"


def gpt2_byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map that a byte-level BPE spells its tokens in (the
    printable Latin-1 bytes stand for themselves; the others are shifted above 255)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for byte in range(256):
        if byte in kept:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


class Tokenizer:
    """Text <-> token ids over UTF-8 bytes. Subclasses: :class:`ByteTokenizer`, :class:`BPETokenizer`."""

    kind: TokenizerKind

    def __init__(self, unseen: Iterable[int] = ()):
        self.unseen = frozenset(int(i) for i in unseen)

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @cached_property
    def token_bytes(self) -> list[bytes]:
        """The bytes each token id stands for."""
        raise NotImplementedError

    @property
    def byte_lengths(self) -> torch.Tensor:
        """``[V]`` long: the UTF-8 bytes each token id stands for (bits per byte divide by their sum)."""
        return torch.tensor([len(b) for b in self.token_bytes], dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids`` (bytes that are no whole UTF-8 character become U+FFFD)."""
        table = self.token_bytes
        return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")

    def bpe_document(self) -> dict | None:
        return None

    def document(self) -> dict:
        return {"format": FORMAT, "kind": self.kind, "vocab_size": self.vocab_size, "unseen": sorted(self.unseen),
                "bpe": self.bpe_document()}

    def to_json(self) -> str:
        return json.dumps(self.document(), sort_keys=True, ensure_ascii=False)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the canonical JSON (what a checkpoint's tokenizer is compared by)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def with_unseen_from(self, texts: Iterable[str]) -> Tokenizer:
        """This tokenizer, its ``unseen`` set to the tokens that never occur in ``texts`` (the training split)."""
        seen: set[int] = set()
        for ids in self.encode_many(list(texts)):
            seen.update(ids)
        self.unseen = frozenset(set(range(self.vocab_size)) - seen)
        self.__dict__.pop("fingerprint", None)
        return self

    def describe(self) -> str:
        return f"{self.kind} tokenizer (vocabulary {self.vocab_size}, {len(self.unseen)} tokens unseen in training)"


class ByteTokenizer(Tokenizer):
    """Token = UTF-8 byte: vocabulary 256, any text encodes, ``decode(encode(t)) == t`` for every string."""

    kind: TokenizerKind = "bytes"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    @cached_property
    def token_bytes(self) -> list[bytes]:
        return [bytes([i]) for i in range(256)]


class BPETokenizer(Tokenizer):
    """A byte-level BPE of the ``tokenizers`` library (train one with :func:`train_bpe`)."""

    kind: TokenizerKind = "bpe"

    def __init__(self, model, unseen: Iterable[int] = ()):
        super().__init__(unseen)
        self.model = model  # a tokenizers.Tokenizer

    @property
    def vocab_size(self) -> int:
        return self.model.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.model.encode(text).ids

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.model.encode_batch(list(texts))]

    @cached_property
    def token_bytes(self) -> list[bytes]:
        back = {char: byte for byte, char in gpt2_byte_alphabet().items()}
        table = []
        for i in range(self.vocab_size):
            spelled = self.model.id_to_token(i)
            if spelled is None or any(c not in back for c in spelled):
                raise ValueError(f"BPE token {i} ({spelled!r}) is not spelled in the byte-level alphabet: the "
                                 "tokenizer is not a byte-level BPE; train one with tokenizer: bpe")
            table.append(bytes(back[c] for c in spelled))
        return table

    def bpe_document(self) -> dict:
        return json.loads(self.model.to_str())


def train_bpe(texts: Sequence[str], vocab_size: int) -> BPETokenizer:
    """A byte-level BPE of at most ``vocab_size`` tokens (the 256 bytes and the merges) trained on ``texts``;
    its ``unseen`` tokens are those that never occur in ``texts``. Deterministic for the same texts."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 257:
        raise ValueError(f"bpe_vocab_size must be an int >= 257 (the 256 bytes and at least one merge), got "
                         f"{vocab_size!r}; use tokenizer: bytes for a byte vocabulary")
    model = HFTokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    model.decoder = decoders.ByteLevel()
    alphabet = sorted(gpt2_byte_alphabet().values())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, special_tokens=[],
                                  show_progress=False, limit_alphabet=256)
    model.train_from_iterator(list(texts), trainer=trainer)
    return BPETokenizer(model).with_unseen_from(texts)


def bytes_tokenizer(texts: Sequence[str]) -> ByteTokenizer:
    """The byte tokenizer, its ``unseen`` bytes those that never occur in ``texts``."""
    return ByteTokenizer().with_unseen_from(texts)


def tokenizer_from_json(text: str, source: str) -> Tokenizer:
    """The tokenizer of a JSON document (:meth:`Tokenizer.to_json`); one-line ``ValueError`` naming
    ``source`` (a file, or a checkpoint) when it is not one."""
    fix = "use the tokenizer.json that `seqmix lm fit` wrote beside the run"
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, TypeError) as error:
        raise ValueError(f"{source} is not JSON ({error}); {fix}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{source} is not a seqmix language-model tokenizer (no \"format\": \"{FORMAT}\"); {fix}")
    kind, unseen = doc.get("kind"), doc.get("unseen")
    if not isinstance(unseen, list) or not all(isinstance(i, int) for i in unseen):
        raise ValueError(f"{source}: \"unseen\" must be a list of token ids; {fix}")
    if kind == "bytes":
        tokenizer: Tokenizer = ByteTokenizer(unseen)
    elif kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        try:
            tokenizer = BPETokenizer(HFTokenizer.from_str(json.dumps(doc.get("bpe"))), unseen)
        except Exception as error:  # the library raises its own exception types for a broken document
            raise ValueError(f"{source}: its \"bpe\" part is not a tokenizers document ({error}); {fix}") from None
    else:
        raise ValueError(f"{source}: unknown tokenizer kind {kind!r}; expected 'bytes' or 'bpe'; {fix}")
    if doc.get("vocab_size") != tokenizer.vocab_size:
        raise ValueError(f"{source}: says vocab_size {doc.get('vocab_size')} but its tokens number "
                         f"{tokenizer.vocab_size}; {fix}")
    return tokenizer
