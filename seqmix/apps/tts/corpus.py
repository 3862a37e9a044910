"""The TTS corpus: real English sentences spoken by espeak-ng (issue 32), generated once and reused.

No recorded speech corpus can be had here, so the corpus is synthesised: espeak-ng (:mod:`.espeak`, the
``en-us`` voice, 22,050 Hz, 16-bit mono) speaks sentences of ACL papers and gives their IPA phonemes, so
the model input is exactly what the audio says; the models learn that one voice.

Sentences (:func:`select_sentences`): 5 to 25 words (a word: a run of letters / digits), only plain
characters (letters, digits, ``,.;:'"()-?!%&/``), starting with a capital and ending with ``.``, ``?`` or
``!``, taken from ``aclsum==0.1.2`` (the installed package) and split by source paper along ACLSum's own
split (100 / 50 / 100 papers):

- train: every such sentence of the **abstracts and introductions** of the 100 train papers (about 2,000;
  the count depends on the filter), then, since that is short of ``n_train`` (4,000), sentences of the
  **body** of the same 100 papers (their full-text parses in ``aclsum/dataset/paper_jsons/``, sections
  other than the abstract and introduction; sentences with brackets dropped, as they hold citations),
  drawn at random (``seed``) to reach ``n_train``;
- val / test: ``n_val`` / ``n_test`` (200) sentences drawn at random (``seed``) from the abstracts and
  introductions of the val / test papers (about 1,000 / 1,900 candidates), kept in paper order.

ACLSum's sentences are pre-tokenised (``"workflow ."``); they are detokenised (:func:`detokenize`)
before speaking. :func:`prepare` writes ``wavs/<id>.wav`` and ``manifest.jsonl`` (one JSON object a
line: ``id, split, paper, source, text, phonemes, wav, duration, sha256``; ``wav`` relative to the
manifest's folder) under ``root`` (default :func:`default_root`: ``./data/tts``); the manifest is written whole
(atomically) at the end. A sentence whose manifest entry matches (same id and text) and whose WAV still
has the recorded sha256 is reused, so a second ``prepare`` only checks. Synthesis is deterministic (the
same sentence gives the same bytes: see :mod:`.espeak`), so a regenerated corpus has the same sha256s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from seqmix.apps.files import atomic_write, data_root

SPLITS: tuple[str, ...] = ("train", "val", "test")
MANIFEST = "manifest.jsonl"
PREPARE_HINT = "run `seqmix tts prepare` (it writes the corpus in about a minute)"
FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str, "split": str, "paper": str, "source": str, "text": str, "phonemes": str, "wav": str,
    "duration": (int, float), "sha256": str}
_PLAIN = re.compile(r"^[A-Za-z0-9 ,.;:'\"()\-?!%&/]+$")
_WORD = re.compile(r"[A-Za-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def default_root() -> Path:
    """``$SEQMIX_DATA/tts`` when a corpus is already there (a shared, prepared copy), else ``./data/tts``.

    Not :func:`~seqmix.apps.files.writable_data_root`: run as root, every folder is writable, and the corpus
    (1.2 GB of WAVs) must not be written into a shared data folder by default."""
    shared = data_root("tts")
    return shared if (shared / MANIFEST).is_file() else Path("data") / "tts"


@dataclass(frozen=True)
class Sentence:
    """One sentence to speak: its id (``<split>-<index>``), split, source paper and section."""

    id: str
    split: str
    paper: str
    source: str  # abstract, introduction or body
    text: str


@dataclass(frozen=True)
class Entry:
    """One manifest line: a :class:`Sentence` spoken (``wav`` relative to the manifest's folder)."""

    id: str
    split: str
    paper: str
    source: str
    text: str
    phonemes: str
    wav: str
    duration: float
    sha256: str


def detokenize(tokens: str) -> str:
    """ACLSum's pre-tokenised text as plain text: ``"workflow ( MT ) , they do n't ."`` ->
    ``"workflow (MT), they don't."``."""
    text = " ".join(tokens.replace("``", '"').replace("''", '"').split())
    text = re.sub(r"([(\[]) ", r"\1", text)
    text = re.sub(r" ([,.;:!?%)\]])", r"\1", text)
    return re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)


def speakable(text: str, min_words: int, max_words: int, *, brackets: bool = True) -> bool:
    """Whether ``text`` is a corpus sentence (module docstring): word count, plain characters, shape."""
    if not _PLAIN.match(text) or not text[0].isupper() or text[-1] not in ".?!":
        return False
    if not brackets and any(c in text for c in "()"):
        return False
    return min_words <= len(_WORD.findall(text)) <= max_words


def body_sentences(paper_json: Path) -> list[str]:
    """The sentences of a paper's full-text parse (``paper_jsons/<id>.json``) outside its abstract and
    introduction, split at ``.``/``?``/``!`` followed by a capital."""
    record = json.loads(paper_json.read_text(encoding="utf-8"))
    sentences = []
    for paragraph in record.get("pdf_parse", {}).get("body_text", []):
        section = str(paragraph.get("section") or "")
        if re.search(r"abstract|introduction", section, re.IGNORECASE):
            continue
        sentences += [" ".join(s.split()) for s in _SENTENCE_END.split(str(paragraph.get("text", "")))]
    return sentences


def select_sentences(n_train: int = 4000, n_val: int = 200, n_test: int = 200, *, min_words: int = 5,
                     max_words: int = 25, seed: int = 0) -> list[Sentence]:
    """The corpus's sentences, train then val then test (module docstring for the rule)."""
    from seqmix.apps.summarization.data import aclsum_dir, read_split

    chosen: list[Sentence] = []
    taken: set[str] = set()  # texts met so far: a sentence is in the corpus once (in the first split that has it)
    wanted = {"train": n_train, "val": n_val, "test": n_test}
    for split in SPLITS:
        candidates: list[tuple[str, str, str]] = []  # (paper, source, text)
        papers = read_split(split)
        for paper in papers:
            for sentence, section in zip(paper.sentences, paper.sections):
                text = detokenize(sentence)
                if section in ("abstract", "introduction") and text not in taken \
                        and speakable(text, min_words, max_words):
                    taken.add(text)
                    candidates.append((paper.id, section, text))
        rng = random.Random(f"{seed}-{split}")
        if len(candidates) >= wanted[split]:
            keep = sorted(rng.sample(range(len(candidates)), wanted[split]))
            picked = [candidates[i] for i in keep]
        else:  # train: all of them, then body sentences of the same papers
            extra = []
            for paper in papers:
                for text in body_sentences(aclsum_dir() / "paper_jsons" / f"{paper.id}.json"):
                    if text not in taken and speakable(text, min_words, max_words, brackets=False):
                        taken.add(text)
                        extra.append((paper.id, "body", text))
            need = wanted[split] - len(candidates)
            if need > len(extra):
                raise ValueError(f"ACLSum's {split} papers give only {len(candidates) + len(extra)} sentences of "
                                 f"{min_words}-{max_words} words; ask for at most that many (n_{split})")
            picked = candidates + [extra[i] for i in sorted(rng.sample(range(len(extra)), need))]
        chosen += [Sentence(id=f"{split}-{i:04d}", split=split, paper=paper, source=source, text=text)
                   for i, (paper, source, text) in enumerate(picked)]
    return chosen


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parse_entry(record: object, where: str) -> Entry:
    """An :class:`Entry` from one decoded manifest line; ``where`` (``file:line``) starts every error."""
    def fail(problem: str) -> ValueError:
        return ValueError(f"{where}: {problem}; the manifest is damaged: delete it and {PREPARE_HINT}")

    if not isinstance(record, dict):
        raise fail(f"a line must be a JSON object, got {type(record).__name__}")
    for key, kind in FIELDS.items():
        if key not in record:
            raise fail(f"missing field {key!r}")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise fail(f"field {key!r} must be a {getattr(kind, '__name__', 'number')}, got {record[key]!r}")
    if record["split"] not in SPLITS:
        raise fail(f"split {record['split']!r} is not one of {', '.join(SPLITS)}")
    if not record["phonemes"].strip():
        raise fail(f"sentence {record['id']!r} has no phonemes")
    if not record["duration"] > 0:
        raise fail(f"sentence {record['id']!r} has duration {record['duration']}, not > 0")
    if not re.fullmatch(r"[0-9a-f]{64}", record["sha256"]):
        raise fail(f"sha256 of {record['id']!r} is not 64 hex digits")
    return Entry(**{key: record[key] for key in FIELDS})


def read_manifest(path: str | Path, *, verify: bool = False) -> list[Entry]:
    """The entries of ``manifest.jsonl``, each line checked (one-line errors naming file, line and field;
    a missing manifest names ``seqmix tts prepare``). ``verify``: every WAV must exist and have its
    recorded sha256 (:func:`check_wav`)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"TTS manifest {path} does not exist; {PREPARE_HINT}")
    entries, ids = [], set()
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg} at column {error.colno}); the manifest is "
                                 f"damaged: delete it and {PREPARE_HINT}") from None
            entry = parse_entry(record, where)
            if entry.id in ids:
                raise ValueError(f"{where}: id {entry.id!r} appears twice; delete the manifest and {PREPARE_HINT}")
            ids.add(entry.id)
            entries.append(entry)
    if not entries:
        raise ValueError(f"TTS manifest {path} holds no sentences; delete it and {PREPARE_HINT}")
    if verify:
        for entry in entries:
            check_wav(entry, path.parent)
    return entries


def wav_path(entry: Entry, root: Path) -> Path:
    return Path(root) / entry.wav


def check_wav(entry: Entry, root: Path, data: bytes | None = None) -> bytes:
    """The bytes of ``entry``'s WAV, checked against the manifest's sha256 (``data``: bytes already read);
    a missing or changed file is a one-line error naming ``seqmix tts prepare``."""
    path = wav_path(entry, root)
    if data is None:
        if not path.is_file():
            raise FileNotFoundError(f"TTS audio {path} of sentence {entry.id!r} does not exist; {PREPARE_HINT}")
        data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise ValueError(f"TTS audio {path} of sentence {entry.id!r} has sha256 {digest[:12]}..., the manifest says "
                         f"{entry.sha256[:12]}... (changed or damaged); {PREPARE_HINT}")
    return data


def write_manifest(path: Path, entries: Iterable[Entry]) -> Path:
    lines = "".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in entries)
    return atomic_write(path, lambda tmp: tmp.write_text(lines, encoding="utf-8"))


def _speak(job: tuple[str, str]) -> tuple[str, int]:
    """Worker task: ``(text, wav path)`` -> ``(phonemes, n_samples)`` (a fresh espeak-ng state each time)."""
    from seqmix.apps.tts.espeak import speak_fresh

    utterance = speak_fresh(*job)
    return utterance.phonemes, utterance.n_samples


def synthesize(sentences: Sequence[Sentence], root: str | Path, *, workers: int = 2, progress: bool = True,
               reuse: bool = True) -> tuple[list[Entry], int]:
    """Speak ``sentences`` into ``root/wavs/`` and write ``root/manifest.jsonl``; returns the entries and how
    many were spoken (the rest reused: same id and text in the old manifest, WAV with its sha256).
    ``workers`` > 1 speaks in that many spawned processes."""
    from tqdm import tqdm

    from seqmix.apps.tts.espeak import SAMPLE_RATE

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = Path(root)
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    old: dict[str, Entry] = {}
    if reuse and (root / MANIFEST).is_file():
        try:
            old = {e.id: e for e in read_manifest(root / MANIFEST)}
        except ValueError:
            old = {}  # a damaged manifest: speak everything again
    entries: dict[str, Entry] = {}
    todo = []
    for s in sentences:
        entry = old.get(s.id)
        path = root / "wavs" / f"{s.id}.wav"
        if entry is not None and entry.text == s.text and entry.split == s.split and path.is_file() \
                and sha256_file(path) == entry.sha256:
            entries[s.id] = entry
        else:
            todo.append(s)
    jobs = [(s.text, str(root / "wavs" / f"{s.id}.wav")) for s in todo]
    bar = tqdm(total=len(jobs), desc="espeak-ng", unit="sentence", disable=not progress or not jobs)
    if workers == 1 or len(jobs) < 2:
        results = []
        for job in jobs:
            results.append(_speak(job))
            bar.update()
    else:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = []
            for result in pool.imap(_speak, jobs, chunksize=16):
                results.append(result)
                bar.update()
    bar.close()
    for s, (phonemes, n_samples) in zip(todo, results):
        if not phonemes.strip():
            raise ValueError(f"espeak-ng gave no phonemes for sentence {s.id!r} ({s.text!r}); drop it from the corpus")
        wav = f"wavs/{s.id}.wav"
        entries[s.id] = Entry(id=s.id, split=s.split, paper=s.paper, source=s.source, text=s.text,
                              phonemes=phonemes, wav=wav, duration=round(n_samples / SAMPLE_RATE, 6),
                              sha256=sha256_file(root / wav))
    ordered = [entries[s.id] for s in sentences]
    write_manifest(root / MANIFEST, ordered)
    return ordered, len(todo)


def prepare(root: str | Path | None = None, *, n_train: int = 4000, n_val: int = 200, n_test: int = 200,
            seed: int = 0, workers: int = 2, progress: bool = True) -> tuple[Path, list[Entry], int]:
    """Select the sentences and speak the missing ones (:func:`synthesize`): ``(manifest path, entries,
    number spoken)``."""
    root = Path(root) if root is not None else default_root()
    sentences = select_sentences(n_train, n_val, n_test, seed=seed)
    entries, spoken = synthesize(sentences, root, workers=workers, progress=progress)
    return root / MANIFEST, entries, spoken


def prepare_command(argv: list[str]) -> int:
    """``seqmix tts prepare [--root DIR] [--workers N] [--n-train N] [--n-val N] [--n-test N] [--seed S]``."""
    parser = argparse.ArgumentParser(prog="seqmix tts prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help=f"output folder (default {default_root()})")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-val", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path, entries, spoken = prepare(args.root, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                                    seed=args.seed, workers=args.workers)
    counts = {split: sum(e.split == split for e in entries) for split in SPLITS}
    hours = sum(e.duration for e in entries) / 3600
    print(f"seqmix tts prepare: {path}: {', '.join(f'{n} {s}' for s, n in counts.items())} sentences, "
          f"{hours:.2f} h of audio; {spoken} spoken, {len(entries) - spoken} reused "
          f"({time.perf_counter() - start:.1f} s)")
    return 0
