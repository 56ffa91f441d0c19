"""Tokenization, vocabulary options and input checks for the reference corpora and user text."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from awdlm.data.corpus import SPLITS, build_corpus, build_vocabulary, check_split_lengths, load_corpus
from awdlm.data.tokenize import EOS, SPACE, UNK, CorpusFormatError, TokenizerSettings, read_tokens


def write_splits(folder: Path, texts: dict[str, str | bytes]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split in SPLITS:
        path = folder / f"{split}.txt"
        text = texts[split]
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        files[split] = path
    return files


def decode(corpus, split: str) -> list[str]:
    return [corpus.vocab.itos[i] for i in corpus.split(split).tolist()]


def test_ptb_vocabulary_unchanged(data_dir: Path) -> None:
    files = {split: data_dir / "ptb" / f"ptb.{split}.txt" for split in SPLITS}
    corpus = build_corpus(files)
    assert len(corpus.vocab) == 10_000
    assert [corpus.split(split).numel() for split in SPLITS] == [929_589, 73_760, 82_430]
    first_line = (data_dir / "ptb" / "ptb.train.txt").read_text().split("\n")[0].split()
    assert corpus.vocab.itos[: len(first_line)] == first_line
    assert corpus.vocab.itos[len(first_line)] == EOS
    assert corpus.oov == {"train": 0, "valid": 0, "test": 0}
    assert corpus.level == "word"


def test_wikitext2_vocabulary_unchanged(data_dir: Path) -> None:
    folder = data_dir / "wikitext-2"
    files = {split: folder / f"wiki.{split}.tokens" for split in SPLITS}
    corpus = build_corpus(files)
    assert len(corpus.vocab) == 33_278
    assert [corpus.split(split).numel() for split in SPLITS] == [2_088_628, 217_646, 245_569]
    # The file starts with an empty line, then " = Valkyria Chronicles III = ".
    assert corpus.vocab.itos[:4] == [EOS, "=", "Valkyria", "Chronicles"]
    assert corpus.oov == {"train": 0, "valid": 0, "test": 0}


def test_crlf_and_blanks_match_lf(tmp_path: Path) -> None:
    clean = "the cat sat\non the mat\n\nend\n"
    messy = "  the\tcat   sat \r\non the\t\tmat\r\n\r\nend\r\n"
    files_clean = write_splits(tmp_path / "clean", dict.fromkeys(SPLITS, clean))
    files_messy = write_splits(tmp_path / "messy", dict.fromkeys(SPLITS, messy))
    corpus_clean = build_corpus(files_clean)
    corpus_messy = build_corpus(files_messy)
    assert corpus_messy.vocab.itos == corpus_clean.vocab.itos
    for split in SPLITS:
        assert torch.equal(corpus_messy.split(split), corpus_clean.split(split))
    assert decode(corpus_clean, "train") == ["the", "cat", "sat", EOS, "on", "the", "mat", EOS, EOS, "end", EOS]


def test_missing_final_newline_same_tokens(tmp_path: Path) -> None:
    with_newline = write_splits(tmp_path / "a", dict.fromkeys(SPLITS, "a b\nc\n"))
    without = write_splits(tmp_path / "b", dict.fromkeys(SPLITS, "a b\nc"))
    assert decode(build_corpus(with_newline), "test") == decode(build_corpus(without), "test")


def test_invalid_utf8_names_file_line_offset(tmp_path: Path) -> None:
    texts: dict[str, str | bytes] = {"train": "fine\n", "valid": b"ok line\nsecond \xff\xfe bad\n", "test": "x\n"}
    files = write_splits(tmp_path, texts)
    with pytest.raises(CorpusFormatError) as info:
        build_corpus(files)
    message = str(info.value)
    assert str(files["valid"]) in message
    assert "line 2" in message
    assert "byte 7 of the line" in message
    assert "byte offset 15" in message


def test_utf8_bom_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfhello world\n")
    assert read_tokens(path) == ["hello", "world", EOS]


def test_literal_eos_rejected_with_line(tmp_path: Path) -> None:
    files = write_splits(tmp_path, {"train": "a b\nc <eos> d\n", "valid": "a\n", "test": "b\n"})
    with pytest.raises(CorpusFormatError) as info:
        build_corpus(files)
    assert str(files["train"]) in str(info.value)
    assert "line 2" in str(info.value)
    assert EOS in str(info.value)


def test_literal_eos_is_characters_at_char_level(tmp_path: Path) -> None:
    files = write_splits(tmp_path, {"train": "a<eos>\n", "valid": "a\n", "test": "a\n"})
    corpus = build_corpus(files, TokenizerSettings.for_level("char"))
    assert decode(corpus, "train") == ["a", "<", "e", "o", "s", ">", EOS]


def test_unk_added_and_oov_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = write_splits(tmp_path, {"train": "a b a\nb c\n", "valid": "a zebra b\n", "test": "yak yak a\n"})
    with caplog.at_level(logging.INFO, logger="awdlm.data.corpus"):
        corpus = load_corpus(files, cache_dir=None, name="toy")
    assert corpus.vocab.itos == ["a", "b", EOS, "c", UNK]
    assert decode(corpus, "valid") == ["a", UNK, "b", EOS]
    assert corpus.oov == {"train": 0, "valid": 1, "test": 2}
    assert "toy valid: 1 of 4 tokens" in caplog.text
    assert "toy test: 2 of 4 tokens" in caplog.text


def test_existing_unk_not_duplicated(tmp_path: Path) -> None:
    files = write_splits(tmp_path, {"train": "a <unk> b\n", "valid": "<unk> q\n", "test": "a\n"})
    corpus = build_corpus(files)
    assert corpus.vocab.itos == ["a", UNK, "b", EOS]
    assert decode(corpus, "valid") == [UNK, UNK, EOS]
    assert corpus.oov["valid"] == 1  # q only; the literal <unk> is not counted


def test_min_count_drops_rare_types(tmp_path: Path) -> None:
    files = write_splits(tmp_path, {"train": "a b a\nc a b\n", "valid": "c b\n", "test": "a\n"})
    corpus = build_corpus(files, TokenizerSettings(min_count=2))
    assert corpus.vocab.itos == ["a", "b", EOS, UNK]
    assert decode(corpus, "train") == ["a", "b", "a", EOS, UNK, "a", "b", EOS]
    assert corpus.oov == {"train": 1, "valid": 1, "test": 0}


def test_max_size_keeps_most_frequent() -> None:
    words = "d a b a c b a d e".split() + [EOS]
    vocab = build_vocabulary(words, max_size=4)
    # a (3), then b and d (2 each, d seen first); <eos> and <unk> take 2 of the 4 slots.
    assert vocab.itos == ["d", "a", EOS, UNK]
    vocab = build_vocabulary(words, max_size=5)
    assert vocab.itos == ["d", "a", "b", EOS, UNK]


def test_max_size_counts_existing_unk() -> None:
    words = ["x", UNK, "y", "x", EOS]
    assert build_vocabulary(words, max_size=3).itos == ["x", UNK, EOS]


def test_invalid_settings_name_option() -> None:
    with pytest.raises(ValueError, match="dataset.min_count"):
        TokenizerSettings(min_count=0)
    with pytest.raises(ValueError, match="dataset.max_size"):
        TokenizerSettings(max_size=1)
    with pytest.raises(ValueError, match="dataset.level"):
        TokenizerSettings(level="byte")


def test_char_level_tokens(tmp_path: Path) -> None:
    files = write_splits(tmp_path, {"train": "ab  c\t d\r\n", "valid": "ba\n", "test": "é!\n"})
    corpus = build_corpus(files, TokenizerSettings.for_level("char"))
    assert corpus.level == "char"
    assert decode(corpus, "train") == ["a", "b", SPACE, "c", SPACE, "d", EOS]
    assert decode(corpus, "test") == [UNK, UNK, EOS]
    assert corpus.oov["test"] == 2


def test_presplit_char_corpus(tmp_path: Path) -> None:
    # The layout of Mikolov's ptb.char files: characters separated by spaces, "_" between words.
    files = write_splits(tmp_path, dict.fromkeys(SPLITS, "a _ b c\n"))
    corpus = build_corpus(files, TokenizerSettings.for_level("char", "whitespace"))
    assert corpus.level == "char"
    assert decode(corpus, "train") == ["a", "_", "b", "c", EOS]


def test_empty_split_rejected(tmp_path: Path) -> None:
    for text in ("", "\n\n  \n"):
        files = write_splits(tmp_path, {"train": "a b\n", "valid": text, "test": "a\n"})
        with pytest.raises(CorpusFormatError) as info:
            build_corpus(files)
        assert "valid split" in str(info.value)
        assert str(files["valid"]) in str(info.value)
        assert "empty" in str(info.value)


def test_missing_file_rejected(tmp_path: Path) -> None:
    files = write_splits(tmp_path, dict.fromkeys(SPLITS, "a\n"))
    files["test"].unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_corpus(files, cache_dir=None, name="toy")
    assert str(files["test"]) in str(info.value)
    assert "dataset.test" in str(info.value)


def test_short_split_rejected(tmp_path: Path) -> None:
    files = write_splits(tmp_path, {"train": "a b c d e f g\n", "valid": "a b\n", "test": "a\n"})
    corpus = build_corpus(files)
    sizes = {"train": (2, "trainer.batch_size"), "valid": (2, "trainer.eval_batch_size")}
    with pytest.raises(ValueError) as info:
        check_split_lengths(corpus, sizes, files)
    message = str(info.value)
    assert "valid split" in message
    assert "has 3 tokens" in message
    assert "trainer.eval_batch_size" in message
    check_split_lengths(corpus, {"train": (4, "trainer.batch_size"), "test": (1, "trainer.test_batch_size")}, files)
