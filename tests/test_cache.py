"""The tokenized-corpus cache: keys, damaged files, concurrent writers and clearing."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from pathlib import Path

import pytest
import torch

from awdlm.data import corpus as corpus_module
from awdlm.data.corpus import CACHE_SUBDIR, SPLITS, cache_key, clear_cache, load_corpus
from awdlm.data.tokenize import TokenizerSettings


@pytest.fixture
def toy_files(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "toy"
    folder.mkdir()
    texts = {"train": "a b c a\nb a d\n", "valid": "a b z\n", "test": "c d\n"}
    files = {}
    for split in SPLITS:
        files[split] = folder / f"{split}.txt"
        files[split].write_text(texts[split])
    return files


def cache_files(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / CACHE_SUBDIR).iterdir())


def test_second_load_reads_cache(toy_files, tmp_path, monkeypatch) -> None:
    cache_dir = tmp_path / "cache"
    first = load_corpus(toy_files, cache_dir, name="toy")
    assert len(cache_files(cache_dir)) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the corpus was tokenized again instead of read from the cache")

    monkeypatch.setattr(corpus_module, "build_corpus", fail)
    second = load_corpus(toy_files, cache_dir, name="toy")
    assert second.vocab.itos == first.vocab.itos
    assert second.oov == first.oov
    assert second.level == first.level
    for split in SPLITS:
        assert torch.equal(second.split(split), first.split(split))


def test_key_covers_settings_and_content(toy_files) -> None:
    base = cache_key(toy_files)
    assert cache_key(toy_files, TokenizerSettings(min_count=2)) != base
    assert cache_key(toy_files, TokenizerSettings(max_size=3)) != base
    assert cache_key(toy_files, TokenizerSettings.for_level("char")) != base
    assert cache_key(toy_files, TokenizerSettings(level="char", tokenizer="whitespace")) != base
    toy_files["test"].write_text("c d d\n")
    assert cache_key(toy_files) != base


def test_settings_get_separate_entries(toy_files, tmp_path) -> None:
    cache_dir = tmp_path / "cache"
    words = load_corpus(toy_files, cache_dir, name="toy")
    chars = load_corpus(toy_files, cache_dir, name="toy", settings=TokenizerSettings.for_level("char"))
    assert len(cache_files(cache_dir)) == 2
    assert words.level == "word"
    assert chars.level == "char"
    assert load_corpus(toy_files, cache_dir, name="toy", settings=TokenizerSettings.for_level("char")).level == "char"


@pytest.mark.parametrize("damage", ["truncated", "foreign", "other_key", "empty"])
def test_damaged_cache_rebuilt(toy_files, tmp_path, caplog, damage) -> None:
    cache_dir = tmp_path / "cache"
    expected = load_corpus(toy_files, cache_dir, name="toy")
    (path,) = cache_files(cache_dir)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif damage == "other_key":
        payload = torch.load(path, weights_only=True)
        payload["key"] = "0" * 64
        torch.save(payload, path)
    else:
        path.write_bytes(b"")

    with caplog.at_level(logging.WARNING, logger="awdlm.data.corpus"):
        rebuilt = load_corpus(toy_files, cache_dir, name="toy")
    assert "ignoring unusable corpus cache" in caplog.text
    assert str(path) in caplog.text
    assert rebuilt.vocab.itos == expected.vocab.itos
    assert torch.equal(rebuilt.train, expected.train)
    # The rebuilt file is sound again: a third load reads it without warnings.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="awdlm.data.corpus"):
        load_corpus(toy_files, cache_dir, name="toy")
    assert caplog.text == ""


def _load_in_process(files: dict[str, Path], cache_dir: Path, barrier, results) -> None:
    barrier.wait()
    corpus = load_corpus(files, cache_dir, name="race")
    results.put(len(corpus.vocab))


def test_concurrent_processes_leave_one_sound_file(data_dir, tmp_path) -> None:
    files = {split: data_dir / "ptb" / f"ptb.{split}.txt" for split in SPLITS}
    cache_dir = tmp_path / "cache"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    workers = [context.Process(target=_load_in_process, args=(files, cache_dir, barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert sorted(results.get(timeout=5) for _ in workers) == [10_000, 10_000]
    (path,) = cache_files(cache_dir)  # no temporary files left beside it
    assert path.suffix == ".pt"
    assert len(load_corpus(files, cache_dir, name="race").vocab) == 10_000


def test_concurrent_threads_same_cache(toy_files, tmp_path) -> None:
    cache_dir = tmp_path / "cache"
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def load() -> None:
        barrier.wait()
        try:
            load_corpus(toy_files, cache_dir, name="toy")
        except BaseException as error:  # collected and asserted on below
            errors.append(error)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(cache_files(cache_dir)) == 1


def test_clear_cache_keeps_other_files(toy_files, tmp_path) -> None:
    cache_dir = tmp_path / "cache"
    load_corpus(toy_files, cache_dir, name="toy")
    load_corpus(toy_files, cache_dir, name="toy", settings=TokenizerSettings(min_count=2))
    unrelated = cache_dir / "notes.txt"
    unrelated.write_text("kept")
    stale = cache_dir / CACHE_SUBDIR / ".toy-0123.pt.abc.tmp"
    stale.write_bytes(b"partial")
    removed = clear_cache(cache_dir)
    assert len(removed) == 3
    assert cache_files(cache_dir) == []
    assert unrelated.read_text() == "kept"
    assert clear_cache(tmp_path / "never-created") == []
