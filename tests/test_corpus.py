"""Tokenization, vocabulary and the content-keyed cache, on the real corpora."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from awdlm.data import EOS, UNK, load_corpus
from awdlm.data.corpus import CACHE_SUBDIR


def split_files(folder, pattern):
    return {split: folder / pattern.format(split=split) for split in ("train", "valid", "test")}


def test_ptb_sizes(data_dir, tmp_path):
    corpus = load_corpus(split_files(data_dir / "ptb", "ptb.{split}.txt"), tmp_path, name="ptb")
    assert len(corpus.vocab) == 10000
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (929589, 73760, 82430)
    assert UNK in corpus.vocab.stoi
    assert EOS in corpus.vocab.stoi


def test_wikitext2_sizes(data_dir, tmp_path):
    corpus = load_corpus(split_files(data_dir / "wikitext-2", "wiki.{split}.tokens"), tmp_path, name="wikitext2")
    assert len(corpus.vocab) == 33278
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (2088628, 217646, 245569)


def test_cache_hit_logged_and_equal(data_dir, tmp_path, caplog):
    files = split_files(data_dir / "ptb", "ptb.{split}.txt")
    first = load_corpus(files, tmp_path, name="ptb")
    with caplog.at_level(logging.INFO, logger="awdlm.data.corpus"):
        second = load_corpus(files, tmp_path, name="ptb")
    assert "loaded cached corpus" in caplog.text
    assert second.vocab.itos == first.vocab.itos
    for split in ("train", "valid", "test"):
        assert torch.equal(second.split(split), first.split(split))


def write_small_corpus(folder, train_text):
    folder.mkdir(exist_ok=True)
    (folder / "train.txt").write_text(train_text)
    (folder / "valid.txt").write_text("a b\n")
    (folder / "test.txt").write_text("b a\n")
    return split_files(folder, "{split}.txt")


def test_edited_file_not_served_stale(tmp_path):
    files = write_small_corpus(tmp_path / "text", "a b c\n")
    cache = tmp_path / "cache"
    # a, b, c, <eos>, and <unk> appended because the text has none
    assert len(load_corpus(files, cache, name="text").vocab) == 5
    files["train"].write_text("a b c d\n")
    assert len(load_corpus(files, cache, name="text").vocab) == 6
    assert len(list((cache / CACHE_SUBDIR).glob("*.pt"))) == 2


def test_truncated_cache_rebuilt(tmp_path, caplog):
    files = write_small_corpus(tmp_path / "text", "a b c\n")
    cache = tmp_path / "cache"
    expected = load_corpus(files, cache, name="text")
    (cached,) = (cache / CACHE_SUBDIR).glob("*.pt")
    cached.write_bytes(cached.read_bytes()[:50])
    with caplog.at_level(logging.WARNING):
        rebuilt = load_corpus(files, cache, name="text")
    assert "unusable corpus cache" in caplog.text
    assert torch.equal(rebuilt.train, expected.train)
    assert load_corpus(files, cache, name="text").vocab.itos == expected.vocab.itos


def test_missing_split_names_file(tmp_path):
    files = write_small_corpus(tmp_path / "text", "a b\n")
    files["valid"].unlink()
    with pytest.raises(FileNotFoundError, match="valid.txt"):
        load_corpus(files, tmp_path / "cache", name="text")


def test_cache_leaves_no_temporary_files(data_dir, tmp_path):
    folder = tmp_path / "ptb"
    shutil.copytree(data_dir / "ptb", folder)
    load_corpus(split_files(folder, "ptb.{split}.txt"), tmp_path / "cache", name="ptb")
    assert [p.suffix for p in (tmp_path / "cache" / CACHE_SUBDIR).iterdir()] == [".pt"]
