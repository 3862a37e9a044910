"""Readers'-emotion data: SemEval-2007 Task 14 (Affective Text) and REN-style vote CSVs.

SemEval-2007 (Strapparava & Mihalcea 2007) is read from its original files in
``<data_dir>/semeval2007/``: ``affectivetext_{trial,test}.xml`` (the headlines) and
``affectivetext_{trial,test}.emotions.gold`` (``id anger disgust fear joy sadness surprise``,
scores 0-100). As in REDAffectiveLM (Kadan et al. 2024): trial then test headlines, the five
emotions anger, fear, joy, sadness, surprise (disgust dropped), rows whose five scores are
all zero dropped (trial ids 43, 86, 121, 151 -> 1,246 rows), each row divided by its sum.

The split is the paper's: ``train_test_split(test_size=0.2, random_state=7)`` then
``train_test_split(test_size=0.25, random_state=7)`` on the rest -> 60/20/20
(747 / 249 / 250 headlines).

A REN-style CSV (a text column and one vote-count column per emotion) goes through
:func:`read_vote_csv`; a row whose votes are all zero has no distribution, so it is an
error naming the rows (``zero_rows="error"``, the default) or dropped and reported
(``zero_rows="drop"``).
"""

from __future__ import annotations

import hashlib
import html
import re
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from seqmix.apps.files import atomic_write, data_root, input_file, refuse_non_finite, save_checkpoint
from seqmix.apps.text.embeddings import AffectLexicon, ContextEncoder, feature_dim, word_tokens

SEMEVAL_EMOTIONS = ("anger", "fear", "joy", "sadness", "surprise")
SEMEVAL_GOLD_COLUMNS = ("anger", "disgust", "fear", "joy", "sadness", "surprise")
SEMEVAL_URL = "https://web.eecs.umich.edu/~mihalcea/downloads/AffectiveText.Semeval.2007.tar.gz"
SEMEVAL_FILES = tuple(f"affectivetext_{part}.{ext}" for part in ("trial", "test") for ext in ("xml", "emotions.gold"))


@dataclass
class EmotionData:
    """``texts[i]`` with its emotion distribution ``targets[i]`` (``[N, K]``, rows sum to 1)."""

    ids: list[str]
    texts: list[str]
    targets: np.ndarray
    emotions: tuple[str, ...]
    dropped: list[str] = field(default_factory=list)  # ids of all-zero rows that were dropped

    def __len__(self) -> int:
        return len(self.texts)


def utf8(raw: bytes, where: str) -> str:
    """``raw`` decoded as UTF-8, or a ``ValueError`` naming ``where`` and the offset of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{where}: byte {err.start} (0x{raw[err.start]:02x}) is not UTF-8 ({err.reason}); "
                         "give UTF-8 text (e.g. iconv -t UTF-8)") from None


def _read_nonempty(path: Path, what: str) -> str:
    text = utf8(input_file(path, f"{what}:").read_bytes(), f"{what}: {path}")
    if not text.strip():
        raise ValueError(f"{what}: {path} is empty")
    return text


_INSTANCE = re.compile(r'<instance id="(\d+)">(.*?)</instance>', re.S)


def read_headlines(path: Path) -> dict[str, str]:
    """``<instance id="..">headline</instance>`` -> ``{id: headline}``.

    Parsed with a pattern rather than an XML parser because the distributed test file has
    a raw ``&`` in two headlines (not well-formed XML); entities are unescaped.
    """
    text = _read_nonempty(path, "SemEval headlines")
    if "<corpus" not in text:
        raise ValueError(f"{path}: not a SemEval Affective Text file (no <corpus> element)")
    found = _INSTANCE.findall(text)
    if len(found) != text.count("<instance"):
        raise ValueError(f"{path}: {text.count('<instance')} <instance> tags but {len(found)} well-formed "
                         "'<instance id=\"N\">text</instance>' entries; the file is malformed")
    out: dict[str, str] = {}
    for ident, headline in found:
        if ident in out:
            raise ValueError(f"{path}: instance id {ident} appears twice")
        headline = html.unescape(headline).strip()
        if not headline:
            raise ValueError(f"{path}: instance id {ident} has an empty headline")
        out[ident] = headline
    return out


def read_gold(path: Path, n_columns: int = len(SEMEVAL_GOLD_COLUMNS)) -> dict[str, np.ndarray]:
    """``id s1 .. sK`` lines -> ``{id: scores [K]}`` (float64)."""
    text = _read_nonempty(path, "SemEval gold scores")
    out: dict[str, np.ndarray] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != n_columns + 1 or not all(p.lstrip("-").isdigit() for p in parts):
            raise ValueError(f"{path}:{n}: expected 'id' and {n_columns} integer scores, got {line!r}")
        if parts[0] in out:
            raise ValueError(f"{path}:{n}: id {parts[0]} appears twice")
        out[parts[0]] = np.array([float(p) for p in parts[1:]])
    return out


def normalise_rows(ids: Sequence[str], scores: np.ndarray, zero_rows: Literal["error", "drop"],
                   source: str) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """Rows divided by their sums; all-zero rows raise or are dropped. Returns
    ``(kept ids, distributions, dropped ids, kept row positions)``."""
    if zero_rows not in ("error", "drop"):
        raise ValueError(f"zero_rows={zero_rows!r} is unknown; choose 'error' or 'drop'")
    if not np.isfinite(scores).all() or (scores < 0).any():
        bad = [ids[i] for i in np.nonzero(~np.isfinite(scores).all(1) | (scores < 0).any(1))[0][:5]]
        raise ValueError(f"{source}: scores must be finite and >= 0; bad rows (first 5 ids): {bad}")
    sums = scores.sum(1)
    zero = sums == 0
    if zero.any() and zero_rows == "error":
        raise ValueError(f"{source}: {int(zero.sum())} rows have all-zero scores (no distribution), ids "
                         f"{[ids[i] for i in np.nonzero(zero)[0][:10]]}; remove them or pass zero_rows='drop'")
    keep = np.nonzero(~zero)[0]
    return ([ids[i] for i in keep], scores[keep] / sums[keep, None], [ids[i] for i in np.nonzero(zero)[0]], keep)


def read_semeval2007(data_dir: str | Path | None = None) -> EmotionData:
    """The 1,246 SemEval-2007 headlines with 5-emotion distributions (trial then test)."""
    root = Path(data_dir) if data_dir else data_root()
    folder = root / "semeval2007"
    missing = [f for f in SEMEVAL_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"SemEval-2007 files {missing} not found in {folder}; set SEQMIX_DATA (or data.data_dir) to a folder "
            f"with semeval2007/, or let the DataModule download {SEMEVAL_URL} (download: true)")
    keep_cols = [SEMEVAL_GOLD_COLUMNS.index(e) for e in SEMEVAL_EMOTIONS]
    ids, texts, rows = [], [], []
    for part in ("trial", "test"):
        headlines = read_headlines(folder / f"affectivetext_{part}.xml")
        gold = read_gold(folder / f"affectivetext_{part}.emotions.gold")
        orphans = sorted(set(gold) - set(headlines), key=int)
        if orphans:
            raise ValueError(f"{folder}/affectivetext_{part}.emotions.gold: ids {orphans[:10]} have no headline in "
                             f"affectivetext_{part}.xml; the two files do not belong together")
        unlabelled = sorted(set(headlines) - set(gold), key=int)
        if unlabelled:
            raise ValueError(f"{folder}/affectivetext_{part}.xml: ids {unlabelled[:10]} have no gold scores")
        for ident in sorted(gold, key=int):
            ids.append(ident)
            texts.append(headlines[ident])
            rows.append(gold[ident][keep_cols])
    kept, targets, dropped, keep = normalise_rows(ids, np.stack(rows), "drop", str(folder))
    return EmotionData(kept, [texts[i] for i in keep], targets, SEMEVAL_EMOTIONS, dropped)


def read_vote_csv(path: str | Path, *, text_column: str, emotion_columns: Sequence[str],
                  id_column: str | None = None, zero_rows: Literal["error", "drop"] = "error") -> EmotionData:
    """A REN-style CSV: one text column and one vote-count column per emotion."""
    import pandas as pd

    path = Path(path)
    _read_nonempty(path, "emotion vote CSV")
    frame = pd.read_csv(path)
    wanted = [text_column, *emotion_columns] + ([id_column] if id_column else [])
    absent = [c for c in wanted if c not in frame.columns]
    if absent:
        raise ValueError(f"{path}: columns {absent} not found; the file has {list(frame.columns)}")
    if len(frame) == 0:
        raise ValueError(f"{path}: has a header but no rows")
    if len(emotion_columns) < 2:
        raise ValueError(f"{path}: need at least 2 emotion columns, got {list(emotion_columns)}")
    texts = frame[text_column]
    if texts.isna().any() or (texts.astype(str).str.strip() == "").any():
        bad = frame.index[texts.isna() | (texts.astype(str).str.strip() == "")].tolist()[:10]
        raise ValueError(f"{path}: empty text in rows {bad} (0-based data rows)")
    try:
        scores = frame[list(emotion_columns)].to_numpy(dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"{path}: emotion columns {list(emotion_columns)} must be numeric vote counts "
                         f"({err})") from err
    refuse_non_finite(scores, list(emotion_columns), str(path), "give finite vote counts (>= 0) in every row")
    ids = frame[id_column].astype(str).tolist() if id_column else [str(i) for i in range(len(frame))]
    kept, targets, dropped, keep = normalise_rows(ids, scores, zero_rows, str(path))
    return EmotionData(kept, [str(texts.iloc[i]) for i in keep], targets, tuple(emotion_columns), dropped)


def paper_split(n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The paper's 60/20/20 split: test 20% first, then 25% of the rest for validation."""
    from sklearn.model_selection import train_test_split

    rest, test = train_test_split(np.arange(n), test_size=0.2, random_state=seed)
    train, val = train_test_split(rest, test_size=0.25, random_state=seed)
    return train, val, test


def download_semeval2007(data_dir: Path) -> None:
    """Fetch the original task archive and keep the four files this app reads."""
    folder = data_dir / "semeval2007"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "semeval.tar.gz"
            urllib.request.urlretrieve(SEMEVAL_URL, archive)
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():
                    name = Path(member.name).name
                    if name in SEMEVAL_FILES and member.isfile():
                        data = tar.extractfile(member).read()
                        atomic_write(folder / name, lambda tmp: tmp.write_bytes(data))
    except OSError as err:
        raise FileNotFoundError(f"could not download SemEval-2007 from {SEMEVAL_URL} ({err}); copy the files "
                                f"{list(SEMEVAL_FILES)} into {folder} by hand") from err


# ---------------------------------------------------------------- features
@dataclass
class TextFeatures:
    """Model inputs for ``N`` texts: word features for the affect branch, token states for the context branch."""

    words: Tensor  # [N, W, F] (F = 0 when the word branch is off)
    word_mask: Tensor  # [N, W] bool
    context: Tensor  # [N, L, C] (C = 0 when the context branch is off)
    context_mask: Tensor  # [N, L] bool
    tokens: list[list[str]]  # the words behind ``words`` (for --explain)


class TextFeaturizer:
    """Texts -> :class:`TextFeatures`, with the settings a checkpoint needs to redo it at predict time."""

    def __init__(self, word_features: Literal["affect", "glove", "none"] = "affect", max_words: int = 16,
                 context: bool = True, context_max_len: int = 32, intensity_path: str | None = None,
                 keep_stopwords: bool = False, context_trainable_layers: int = 0):
        if word_features == "none" and not context:
            raise ValueError("both branches are off (word_features='none', context=false); enable at least one")
        if max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {max_words}")
        self.word_features, self.max_words, self.context = word_features, max_words, context
        self.context_max_len, self.keep_stopwords = context_max_len, keep_stopwords
        self.context_trainable_layers = context_trainable_layers
        self.word_dim = 0 if word_features == "none" else feature_dim(word_features)
        self.lexicon = None if word_features == "none" else AffectLexicon(word_features, intensity_path)
        self.encoder = ContextEncoder(max_len=context_max_len, skip_top=context_trainable_layers) if context else None
        self.context_dim = self.encoder.dim if self.encoder else 0

    def context_key(self, texts: Sequence[str]) -> str:
        """Names the cached context states of ``texts`` under these settings."""
        h = hashlib.sha1("\n".join(texts).encode())
        h.update(repr((str(self.encoder.model_dir) if self.encoder else None, self.context_max_len,
                       self.context_trainable_layers)).encode())
        return h.hexdigest()[:16]

    def word_part(self, texts: Sequence[str]) -> tuple[Tensor, Tensor, list[list[str]]]:
        tokens = [word_tokens(t, stopwords=self.keep_stopwords)[: self.max_words] for t in texts]
        if self.lexicon is None:
            n = len(texts)
            return torch.zeros(n, self.max_words, 0), torch.zeros(n, self.max_words, dtype=torch.bool), tokens
        words, word_mask = self.lexicon.encode(tokens, self.max_words)
        return words, word_mask, tokens

    def context_part(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        if self.encoder is None:
            return torch.zeros(len(texts), 1, 0), torch.ones(len(texts), 1, dtype=torch.bool)
        return self.encoder.encode(texts)

    def __call__(self, texts: Sequence[str], context: tuple[Tensor, Tensor] | None = None) -> TextFeatures:
        """Features of ``texts``; ``context`` passes precomputed (cached) context states."""
        if not texts:
            raise ValueError("no texts to featurize")
        words, word_mask, tokens = self.word_part(texts)
        ctx, ctx_mask = context if context is not None else self.context_part(texts)
        return TextFeatures(words, word_mask, ctx, ctx_mask, tokens)


class FeatureDataset(Dataset):
    def __init__(self, feats: TextFeatures, targets: Tensor, rows: np.ndarray):
        self.feats, self.targets, self.rows = feats, targets, torch.as_tensor(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        r = self.rows[i]
        f = self.feats
        return {"words": f.words[r], "word_mask": f.word_mask[r], "context": f.context[r],
                "context_mask": f.context_mask[r], "target": self.targets[r], "row": r}


class LengthBuckets(Sampler[list[int]]):
    """Shuffled batches of similar lengths: shuffle, cut into pools of ``pool`` batches, sort each pool
    by length, cut it into batches, shuffle the batch order. With :func:`collate_trimmed` a batch
    then pads to about its own length, not the longest headline's (fine-tuned encoder layers cost
    per padded token); the batches stay random from epoch to epoch (torch's global generator)."""

    def __init__(self, lengths: Tensor, batch_size: int, pool: int = 8):
        self.lengths, self.batch_size, self.pool = lengths, batch_size, pool

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths))
        batches = []
        for start in range(0, len(order), self.batch_size * self.pool):
            chunk = order[start:start + self.batch_size * self.pool]
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            batches += [chunk[i:i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        for i in torch.randperm(len(batches)).tolist():
            yield batches[i]


def collate_trimmed(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack a batch and cut the padding every row shares: words to the longest headline in
    the batch, context tokens to the longest tokenization (headlines are short, the buffers
    are ``max_words`` / ``context_max_len`` long)."""
    batch = {k: torch.stack([item[k] for item in items]) for k in items[0]}
    n_words = max(1, int(batch["word_mask"].sum(1).max()))
    n_ctx = max(1, int(batch["context_mask"].sum(1).max()))
    batch["words"], batch["word_mask"] = batch["words"][:, :n_words], batch["word_mask"][:, :n_words]
    batch["context"], batch["context_mask"] = batch["context"][:, :n_ctx], batch["context_mask"][:, :n_ctx]
    return batch


class EmotionDataModule(pl.LightningDataModule):
    """Emotion distributions with frozen-encoder features cached on disk (``cache_dir``).

    With ``context_trainable_layers = k`` the cache holds the encoder states below its top
    ``k`` layers, which the model fine-tunes (the rest of the encoder stays frozen).

    ``length_buckets`` draws training batches of similar token counts (:class:`LengthBuckets`),
    which cuts the padding the fine-tuned layers pay for.

    ``source="semeval2007"`` reads ``<data_dir>/semeval2007``; ``source="csv"`` reads
    ``csv_path`` with :func:`read_vote_csv`. ``n_emotions``, ``word_dim`` and ``context_dim``
    are linked to the model by the CLI.
    """

    def __init__(self, data_dir: str | None = None, source: Literal["semeval2007", "csv"] = "semeval2007",
                 csv_path: str | None = None, text_column: str = "text", emotion_columns: list[str] | None = None,
                 zero_rows: Literal["error", "drop"] = "error", download: bool = False, split_seed: int = 7,
                 word_features: Literal["affect", "glove", "none"] = "affect", max_words: int = 16,
                 keep_stopwords: bool = False, context: bool = True, context_max_len: int = 32,
                 context_trainable_layers: int = 0, batch_size: int = 32, length_buckets: bool = True,
                 cache_dir: str | None = "runs/text/cache"):
        super().__init__()
        if source not in ("semeval2007", "csv"):
            raise ValueError(f"source={source!r} is unknown; choose 'semeval2007' or 'csv'")
        if source == "csv" and (not csv_path or not emotion_columns):
            raise ValueError("source='csv' needs csv_path and emotion_columns (the vote-count columns)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir) if data_dir else data_root()
        self.featurizer = TextFeaturizer(word_features, max_words, context, context_max_len,
                                         str(self.data_dir / "lexicons" / "NRC-AffectIntensity-Lexicon.txt"),
                                         keep_stopwords, context_trainable_layers)
        self.data: EmotionData | None = None
        self.features: TextFeatures | None = None

    # sizes the model needs (CLI links); reading the data here is cheap
    @property
    def n_emotions(self) -> int:
        return len(SEMEVAL_EMOTIONS) if self.hparams.source == "semeval2007" else len(self.hparams.emotion_columns)

    @property
    def word_dim(self) -> int:
        return self.featurizer.word_dim

    @property
    def context_dim(self) -> int:
        return self.featurizer.context_dim

    @property
    def context_trainable_layers(self) -> int:
        return self.featurizer.context_trainable_layers if self.hparams.context else 0

    def prepare_data(self) -> None:
        if self.hparams.source == "semeval2007" and self.hparams.download:
            folder = self.data_dir / "semeval2007"
            if any(not (folder / f).is_file() for f in SEMEVAL_FILES):
                download_semeval2007(self.data_dir)

    def load(self) -> EmotionData:
        h = self.hparams
        if h.source == "semeval2007":
            return read_semeval2007(self.data_dir)
        return read_vote_csv(h.csv_path, text_column=h.text_column, emotion_columns=h.emotion_columns,
                             zero_rows=h.zero_rows)

    def setup(self, stage: str | None = None) -> None:
        if self.features is not None:
            return
        self.data = self.load()
        self.features = self.cached_features(self.data.texts)
        self.targets = torch.tensor(self.data.targets, dtype=torch.float32)
        self.splits = dict(zip(("train", "val", "test"), paper_split(len(self.data), self.hparams.split_seed)))

    def cached_features(self, texts: list[str]) -> TextFeatures:
        """Word features are cheap and recomputed; the frozen encoder's states are cached on disk."""
        if self.hparams.cache_dir is None or self.featurizer.encoder is None:
            return self.featurizer(texts)
        path = Path(self.hparams.cache_dir) / f"context-{self.featurizer.context_key(texts)}.pt"
        if path.is_file():
            cached = torch.load(path, weights_only=True)
            return self.featurizer(texts, context=(cached["states"], cached["mask"]))
        states, mask = self.featurizer.context_part(texts)
        save_checkpoint({"states": states, "mask": mask}, path)
        return self.featurizer(texts, context=(states, mask))

    def split_rows(self, split: str) -> np.ndarray:
        self.setup()
        return self.splits[split]

    def loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        ds = FeatureDataset(self.features, self.targets, self.splits[split])
        if shuffle and self.hparams.length_buckets:
            rows = torch.as_tensor(self.splits[split])
            mask = self.features.context_mask if self.featurizer.encoder is not None else self.features.word_mask
            buckets = LengthBuckets(mask[rows].sum(1), self.hparams.batch_size)
            return DataLoader(ds, batch_sampler=buckets, collate_fn=collate_trimmed)
        return DataLoader(ds, batch_size=self.hparams.batch_size, shuffle=shuffle, collate_fn=collate_trimmed)

    def train_dataloader(self):
        return self.loader("train", True)

    def val_dataloader(self):
        return self.loader("val", False)

    def test_dataloader(self):
        return self.loader("test", False)

    def predict_dataloader(self):
        return self.loader("test", False)
