"""Vocabulary, tokenization and the on-disk cache of tokenized corpora."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from awdlm.serialization import save_atomic

log = logging.getLogger(__name__)

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")
# Bump when the tokenization or the cache layout changes, so old caches are rebuilt.
CACHE_FORMAT = 1


@dataclass
class Vocabulary:
    """Word types in order of first appearance in the training split."""

    itos: list[str]

    def __post_init__(self) -> None:
        self.stoi = {word: index for index, word in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, words: Iterable[str]) -> list[int]:
        """Map words to ids; a word outside the vocabulary maps to ``<unk>``.

        Raises KeyError for an unknown word when the vocabulary has no ``<unk>``.
        """
        unk = self.stoi.get(UNK)
        if unk is None:
            return [self.stoi[word] for word in words]
        return [self.stoi.get(word, unk) for word in words]


@dataclass
class Corpus:
    """A tokenized corpus: the vocabulary and one 1-D tensor of word ids per split."""

    vocab: Vocabulary
    train: Tensor
    valid: Tensor
    test: Tensor

    def split(self, name: str) -> Tensor:
        return getattr(self, name)


def tokenize_lines(lines: Iterable[str]) -> list[str]:
    """Split each line on whitespace and end it with ``<eos>`` (empty lines too)."""
    words: list[str] = []
    for line in lines:
        words.extend(line.split())
        words.append(EOS)
    return words


def read_words(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as file:
        return tokenize_lines(file)


def build_corpus(files: dict[str, Path]) -> Corpus:
    """Tokenize the three split files; the vocabulary comes from the training split."""
    train_words = read_words(files["train"])
    vocab = Vocabulary(list(dict.fromkeys(train_words)))
    tensors = {"train": torch.tensor(vocab.encode(train_words), dtype=torch.long)}
    for split in ("valid", "test"):
        words = read_words(files[split])
        try:
            ids = vocab.encode(words)
        except KeyError as error:
            raise ValueError(
                f"{files[split]}: word {error.args[0]!r} is not in the vocabulary of "
                f"{files['train']}, and the vocabulary has no {UNK} to map it to"
            ) from None
        tensors[split] = torch.tensor(ids, dtype=torch.long)
    return Corpus(vocab, **tensors)


def file_digest(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def cache_key(files: dict[str, Path]) -> str:
    """Key the cache by the split files' contents and the tokenization format."""
    key = hashlib.sha256(f"format={CACHE_FORMAT}".encode())
    for split in SPLITS:
        key.update(f"{split}={file_digest(files[split])}".encode())
    return key.hexdigest()


def _load_cached(path: Path) -> Corpus | None:
    try:
        payload = torch.load(path, weights_only=True)
        corpus = Corpus(Vocabulary(list(payload["itos"])), *(payload[s] for s in SPLITS))
    except Exception as error:  # a truncated or foreign file: any failure means rebuild
        log.warning("ignoring unreadable corpus cache %s (%s: %s); rebuilding it", path, type(error).__name__, error)
        return None
    return corpus


def load_corpus(files: dict[str, Path], cache_dir: Path | None, name: str = "corpus") -> Corpus:
    """Load a corpus from the cache, or tokenize it and write the cache.

    ``files`` maps each of train, valid and test to its text file. With
    ``cache_dir=None`` nothing is cached.
    """
    for split in SPLITS:
        if not files[split].is_file():
            raise FileNotFoundError(f"{split} split of {name} not found: {files[split]}")
    if cache_dir is None:
        return build_corpus(files)

    path = Path(cache_dir) / f"{name}-{cache_key(files)[:20]}.pt"
    if path.is_file():
        corpus = _load_cached(path)
        if corpus is not None:
            log.info("loaded cached corpus %s", path)
            return corpus

    corpus = build_corpus(files)
    payload = {"itos": corpus.vocab.itos, **{s: corpus.split(s) for s in SPLITS}}
    save_atomic(payload, path)
    log.info("tokenized %s and cached it at %s", name, path)
    return corpus
