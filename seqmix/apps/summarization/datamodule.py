"""ACLSum train / val / test as batches: one example per (paper, aspect), its source as sentences of word ids.

The limits (``max_sentences``, ``max_words``, ``max_summary_len``), how a longer paper is cut, and the
encoding and padding of the examples are :mod:`.batch`'s (which ``predict`` uses without Lightning).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from seqmix.apps.data import Split, SplitLoaders
# the examples' encoding and batching (no Lightning there), re-exported: tests and models import them from here too
from seqmix.apps.summarization.batch import (SECTION_IDS, Batch, Example, collate, encode_example,  # noqa: F401
                                             kept_sentences)
from seqmix.apps.summarization.data import ASPECTS, check_aspect, examples, read_split
from seqmix.apps.summarization.vocab import Vocabulary


class ExampleDataset(Dataset):
    def __init__(self, items: list[Example]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Example:
        return self.items[index]


class SummarizationDataModule(SplitLoaders):
    """ACLSum train / val / test as :class:`Batch` es; the vocabulary comes from the training papers.

    Args:
        aspects: the aspects made into examples (one example per paper and aspect).
        max_sentences, max_words, max_summary_len: the input limits (module docstring: how a paper is cut).
        vocab_size, min_count: the vocabulary's size cap and the least count of a kept word (training papers).
        root: a folder with ACLSum's ``{train,val,test}.jsonl``; None reads the installed ``aclsum`` package.
    """

    def __init__(self, aspects: list[str] | None = None, max_sentences: int = 96, max_words: int = 64,
                 max_summary_len: int = 32, vocab_size: int = 20000, min_count: int = 2, root: str | None = None,
                 batch_size: int = 16, num_workers: int = 0, seed: int | None = 0):
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        for name, value in (("max_sentences", max_sentences), ("max_words", max_words),
                            ("max_summary_len", max_summary_len)):
            if value < 1:
                raise ValueError(f"SummarizationDataModule: {name} must be >= 1, got {value}")
        self.aspects = [check_aspect(a) for a in (aspects or list(ASPECTS))]
        self.limits = dict(max_sentences=max_sentences, max_words=max_words, max_summary_len=max_summary_len)
        self.root = Path(root) if root is not None else None
        self.papers = {split: read_split(split, self.root) for split in ("train", "val", "test")}
        train = self.papers["train"]
        self.vocab = Vocabulary.build((text for p in train for text in (*p.sentences, *p.summaries.values())),
                                      max_size=vocab_size, min_count=min_count)
        self._data: dict[str, ExampleDataset] = {}

    @property
    def vocab_words(self) -> list[str]:
        """The vocabulary's words (linked into the model, which saves them in its checkpoint)."""
        return self.vocab.words

    def split_data(self, split: Split) -> Dataset:
        if split not in self.papers:
            raise ValueError(f"the summarization app has no {split!r} split; use train, val or test")
        if split not in self._data:
            self._data[split] = ExampleDataset([encode_example(p, a, self.vocab, **self.limits)
                                                for p, a in examples(self.papers[split], self.aspects)])
        return self._data[split]

    def loader(self, split: Split, *, shuffle: bool = False) -> DataLoader:
        return DataLoader(self.split_data(split), batch_size=self.batch_size, shuffle=shuffle,
                          generator=self.shuffle if shuffle else None, num_workers=self.num_workers,
                          collate_fn=partial(collate, vocab_size=len(self.vocab)))
