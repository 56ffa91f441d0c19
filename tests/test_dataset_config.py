"""Dataset groups composed by Hydra, their validation, and the trainer's data preparation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import awdlm
from awdlm.config import Config, ConfigError, to_config
from awdlm.data.corpus import SPLITS, load_corpus
from awdlm.data.tokenize import TokenizerSettings
from awdlm.train import dataset_files, run

CONF_DIR = Path(awdlm.__file__).resolve().parent / "conf"


def compose_config(*overrides: str) -> Config:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_config(compose(config_name="config", overrides=list(overrides)))


def test_reference_datasets_compose(tmp_path: Path) -> None:
    for name, folder, level in (("ptb", "ptb", "word"), ("wikitext2", "wikitext-2", "word"), ("ptb_char", "ptb_char", "char")):
        config = compose_config(f"dataset={name}", f"data_dir={tmp_path}")
        assert config.dataset.name == name
        assert config.dataset.path == str(tmp_path / folder)
        assert config.dataset.level == level
        assert config.dataset.download is True
        assert config.dataset.sources, name


def test_text_dataset_needs_path() -> None:
    with pytest.raises(ConfigError) as info:
        compose_config("dataset=text")
    assert "invalid dataset.path=''" in str(info.value)
    assert "override with dataset.path=" in str(info.value)


def test_text_dataset_files(tmp_path: Path) -> None:
    for split in SPLITS:
        (tmp_path / f"{split}.txt").write_text("one line of text\nanother line\n")
    config = compose_config("dataset=text", f"dataset.path={tmp_path}", "dataset.level=char", "dataset.min_count=2")
    files = dataset_files(config)
    assert files == {split: tmp_path / f"{split}.txt" for split in SPLITS}
    assert config.dataset.download is False
    settings = TokenizerSettings.for_level(config.dataset.level, config.dataset.tokenizer, min_count=config.dataset.min_count)
    corpus = load_corpus(files, cache_dir=None, name=config.dataset.name, settings=settings)
    assert corpus.level == "char"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("dataset.level=byte", "dataset.level"),
        ("dataset.tokenizer=bpe", "dataset.tokenizer"),
        ("dataset.min_count=0", "dataset.min_count"),
        ("dataset.max_size=1", "dataset.max_size"),
    ],
)
def test_invalid_dataset_values_rejected(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        compose_config(override)
    assert f"invalid {key}=" in str(info.value)
    assert f"override with {key}=" in str(info.value)


def test_missing_files_downloaded_from_sources(tmp_path: Path, data_dir: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for split in SPLITS:
        (mirror / f"ptb.{split}.txt").write_bytes((data_dir / "ptb" / f"ptb.{split}.txt").read_bytes())
    # A local folder listed first is used before the public sources.
    config = compose_config(f"data_dir={tmp_path / 'data'}", f"dataset.sources=[{mirror}]")
    files = dataset_files(config)
    for split in SPLITS:
        assert files[split].read_bytes() == (data_dir / "ptb" / f"ptb.{split}.txt").read_bytes()


def test_download_false_reports_missing(tmp_path: Path) -> None:
    config = compose_config(f"data_dir={tmp_path}", "dataset.download=false")
    with pytest.raises(FileNotFoundError, match="dataset.download=false"):
        dataset_files(config)


def test_run_rejects_short_split(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("a b c d e f g h\n" * 20)
    (tmp_path / "valid.txt").write_text("a b c\n")
    (tmp_path / "test.txt").write_text("a b c d\n")
    config = compose_config("dataset=text", f"dataset.path={tmp_path}", "cache_dir=null", "trainer.eval_batch_size=10")
    with pytest.raises(ValueError) as info:
        run(config, tmp_path / "run")
    message = str(info.value)
    assert "valid split" in message
    assert str(tmp_path / "valid.txt") in message
    assert "trainer.eval_batch_size" in message
    assert not (tmp_path / "run").exists()  # rejected before the trainer starts
