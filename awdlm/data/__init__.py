"""Corpora, vocabulary, the tokenized-corpus cache and batching."""

from awdlm.data.batching import BPTTSampler, batchify, get_batch
from awdlm.data.corpus import EOS, UNK, Corpus, Vocabulary, load_corpus

__all__ = ["BPTTSampler", "Corpus", "EOS", "UNK", "Vocabulary", "batchify", "get_batch", "load_corpus"]
