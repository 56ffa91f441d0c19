"""Vocabulary, tokenized corpora and the on-disk cache of tokenized corpora."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from awdlm.data.tokenize import EOS, UNK, CorpusFormatError, TokenizerSettings, read_tokens
from awdlm.serialization import save_atomic

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
# Bump when the tokenization or the cache layout changes, so old caches are rebuilt.
CACHE_FORMAT = 2
CACHE_SUBDIR = "corpora"  # tokenized corpora live in <cache_dir>/corpora/


@dataclass
class Vocabulary:
    """Token types; the id of a type is its index in ``itos``."""

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


def build_vocabulary(train_words: list[str], min_count: int = 1, max_size: int | None = None) -> Vocabulary:
    """Build the vocabulary of the training split, in order of first appearance.

    Types seen fewer than ``min_count`` times are left out. With ``max_size``
    only the most frequent types are kept (ties go to the earlier type), so
    that the vocabulary has at most ``max_size`` entries. ``<eos>`` is always
    kept. ``<unk>`` is kept when the text has it and appended at the end when
    it does not, so every word of any split can be encoded. With the defaults
    the result is every training type in order of first appearance, which
    for Penn Treebank (it contains ``<unk>``) is its 10,000 types.
    """
    counts = Counter(train_words)
    order = list(dict.fromkeys(train_words))
    special = {EOS, UNK}
    selected = [word for word in order if counts[word] >= min_count or word in special]

    reserve_unk = UNK not in counts
    if max_size is not None:
        budget = max_size - (1 if reserve_unk else 0)
        if len(selected) > budget:
            position = {word: index for index, word in enumerate(order)}
            # Specials first, then by descending count, then by first appearance.
            ranked = sorted(selected, key=lambda word: (word not in special, -counts[word], position[word]))
            chosen = set(ranked[:budget])
            selected = [word for word in selected if word in chosen]
    if reserve_unk:
        selected.append(UNK)
    return Vocabulary(selected)


@dataclass
class Corpus:
    """A tokenized corpus: the vocabulary and one 1-D tensor of token ids per split.

    ``level`` is ``word`` or ``char``. ``oov`` counts, per split, the tokens
    that were outside the vocabulary and were mapped to ``<unk>``. Tokens that
    were ``<unk>`` in the text are not counted.
    """

    vocab: Vocabulary
    train: Tensor
    valid: Tensor
    test: Tensor
    level: str = "word"
    oov: dict[str, int] = field(default_factory=dict)

    def split(self, name: str) -> Tensor:
        return getattr(self, name)


def _count_oov(words: list[str], vocab: Vocabulary) -> int:
    return sum(1 for word in words if word not in vocab.stoi)


def build_corpus(files: dict[str, Path], settings: TokenizerSettings | None = None) -> Corpus:
    """Tokenize the three split files; the vocabulary comes from the training split.

    Raises CorpusFormatError for invalid UTF-8, a literal ``<eos>`` token or a
    split without any token but line ends.
    """
    settings = settings or TokenizerSettings()
    words = {split: read_tokens(files[split], settings.tokenizer) for split in SPLITS}
    for split in SPLITS:
        if all(word == EOS for word in words[split]):
            raise CorpusFormatError(
                f"{split} split {files[split]} is empty: it has {len(words[split])} lines and no tokens; "
                f"put text into it or point dataset.{split} at another file"
            )

    vocab = build_vocabulary(words["train"], settings.min_count, settings.max_size)
    tensors = {split: torch.tensor(vocab.encode(words[split]), dtype=torch.long) for split in SPLITS}
    oov = {split: _count_oov(words[split], vocab) for split in SPLITS}
    return Corpus(vocab, **tensors, level=settings.level, oov=oov)


def log_oov(corpus: Corpus, name: str) -> None:
    for split in SPLITS:
        total = corpus.split(split).numel()
        count = corpus.oov.get(split, 0)
        log.info(
            "%s %s: %d of %d tokens (%.2f%%) are outside the vocabulary and map to %s",
            name, split, count, total, 100.0 * count / max(total, 1), UNK,
        )


def check_split_lengths(corpus: Corpus, batch_sizes: dict[str, tuple[int, str]], files: dict[str, Path]) -> None:
    """Raise ValueError when a split is too short for its number of batch columns.

    ``batch_sizes`` maps a split to its batch size and the config key that
    sets it. Each column needs at least 2 tokens: one input and one target.
    """
    for split, (batch_size, key) in batch_sizes.items():
        tokens = corpus.split(split).numel()
        if tokens < 2 * batch_size:
            raise ValueError(
                f"{split} split {files[split]} has {tokens} tokens, fewer than the {2 * batch_size} that "
                f"{batch_size} batch columns of at least 2 tokens need; add text to the file "
                f"or lower {key} (now {batch_size})"
            )


def file_digest(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def cache_key(files: dict[str, Path], settings: TokenizerSettings | None = None) -> str:
    """Key the cache by the split files' contents, the tokenizer settings and the format."""
    settings = settings or TokenizerSettings()
    key = hashlib.sha256(f"format={CACHE_FORMAT}".encode())
    for option, value in sorted(asdict(settings).items()):
        key.update(f";{option}={value!r}".encode())
    for split in SPLITS:
        key.update(f";{split}={file_digest(files[split])}".encode())
    return key.hexdigest()


def cache_path(cache_dir: Path, name: str, key: str) -> Path:
    return Path(cache_dir) / CACHE_SUBDIR / f"{name}-{key[:20]}.pt"


def _load_cached(path: Path, key: str) -> Corpus | None:
    """Load a cache file, or return None after logging why it cannot be used."""
    try:
        payload = torch.load(path, weights_only=True)
        if payload.get("key") != key:
            raise ValueError(f"it was written for cache key {str(payload.get('key'))[:20]}, not {key[:20]}")
        tensors = {split: payload[split] for split in SPLITS}
        for split, tensor in tensors.items():
            if not isinstance(tensor, Tensor) or tensor.dim() != 1 or tensor.dtype != torch.long:
                raise ValueError(f"its {split} entry is not a 1-D tensor of token ids")
        vocab = Vocabulary(list(payload["itos"]))
        corpus = Corpus(vocab, **tensors, level=payload["level"], oov=dict(payload["oov"]))
    except Exception as error:  # a truncated or foreign file: any failure means rebuild
        log.warning("ignoring unusable corpus cache %s (%s: %s); rebuilding it", path, type(error).__name__, error)
        return None
    return corpus


def load_corpus(
    files: dict[str, Path],
    cache_dir: Path | None,
    name: str = "corpus",
    settings: TokenizerSettings | None = None,
) -> Corpus:
    """Load a corpus from the cache, or tokenize it and write the cache.

    ``files`` maps each of train, valid and test to its text file. With
    ``cache_dir=None`` nothing is cached. The cache file is written to a
    temporary name and renamed, so concurrent runs each leave a complete file.
    """
    for split in SPLITS:
        if not Path(files[split]).is_file():
            raise FileNotFoundError(
                f"{split} split of {name} not found: {files[split]}; "
                f"check dataset.path and dataset.{split}"
            )
    settings = settings or TokenizerSettings()
    if cache_dir is None:
        corpus = build_corpus(files, settings)
        log_oov(corpus, name)
        return corpus

    key = cache_key(files, settings)
    path = cache_path(Path(cache_dir), name, key)
    if path.is_file():
        corpus = _load_cached(path, key)
        if corpus is not None:
            log.info("loaded cached corpus %s", path)
            log_oov(corpus, name)
            return corpus

    corpus = build_corpus(files, settings)
    payload = {
        "key": key,
        "level": corpus.level,
        "oov": corpus.oov,
        "itos": corpus.vocab.itos,
        **{split: corpus.split(split) for split in SPLITS},
    }
    try:
        save_atomic(payload, path)
    except OSError as error:  # the cache only saves time: train on without it
        log.warning("could not write corpus cache %s (%s); continuing without it", path, error)
    else:
        log.info("tokenized %s and cached it at %s", name, path)
    log_oov(corpus, name)
    return corpus


def clear_cache(cache_dir: Path) -> list[Path]:
    """Delete every cached corpus under ``cache_dir`` and return the deleted paths.

    Temporary files of a write in progress are deleted too, so a run that is
    writing its cache at the same moment fails its rename and must be rerun.
    """
    folder = Path(cache_dir) / CACHE_SUBDIR
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and (path.suffix == ".pt" or path.name.endswith(".tmp")):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
