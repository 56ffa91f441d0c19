"""Corpora, vocabulary, the tokenized-corpus cache, batching and downloads."""

from awdlm.data.batching import BPTTSampler, batchify, get_batch
from awdlm.data.corpus import Corpus, Vocabulary, load_corpus
from awdlm.data.tokenize import EOS, UNK, TokenizerSettings

__all__ = [
    "BPTTSampler",
    "Corpus",
    "EOS",
    "TokenizerSettings",
    "UNK",
    "Vocabulary",
    "batchify",
    "get_batch",
    "load_corpus",
]
