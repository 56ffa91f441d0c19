"""Smoke runs of ``python -m awdlm.train`` on real Penn Treebank with a tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TINY = [
    "model.emsize=16",
    "model.nhid=32",
    "trainer.epochs=2",
    "trainer.limit_train_batches=6",
    "trainer.limit_val_batches=4",
    "trainer.limit_test_batches=4",
    "trainer.log_interval=2",
    "trainer.device=cpu",
    "optim.when=[1]",
]
# One thread per run keeps the smoke runs quick when other processes share the CPU.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train(args: list[str], data_dir: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    # Hydra's flags (such as -m) must come before the overrides.
    flags = [arg for arg in args if arg.startswith("-")]
    overrides = [arg for arg in args if not arg.startswith("-")]
    command = [sys.executable, "-m", "awdlm.train", *flags, f"data_dir={data_dir}", f"cache_dir={cache_dir}", *TINY, *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)


def scalars(run_dir: Path) -> dict[str, list[float]]:
    """Read every scalar series from a run directory's TensorBoard events."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [event.value for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def dense_run(data_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("dense")
    result = train([f"hydra.run.dir={root / 'run'}"], data_dir, root / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result


def test_run_writes_tensorboard_curves(dense_run):
    root, _ = dense_run
    series = scalars(root / "run")
    for tag in ("train/loss", "train/ppl", "val/loss", "val/ppl", "optim/lr", "optim/averaging", "test/ppl"):
        assert tag in series, f"{tag} missing from {sorted(series)}"
    assert len(series["val/ppl"]) == 2
    assert series["optim/lr"] == [30.0, 3.0]  # each epoch's own rate; optim.when=[1] drops it after epoch 1
    assert any("tokens_per_s" in tag for tag in series)


def test_run_logs_epochs_and_test(dense_run):
    root, result = dense_run
    log = (root / "run" / "train.log").read_text()
    assert log.count("| val loss") == 2
    assert "test loss" in log
    assert "tokenized ptb" in log


def test_best_checkpoint_contents(dense_run):
    root, _ = dense_run
    checkpoint = torch.load(root / "run" / "best.pt", weights_only=True)
    for key in ("model", "optimizer", "config", "vocab", "epoch", "rng"):
        assert key in checkpoint
    assert len(checkpoint["vocab"]) == 10000
    assert checkpoint["config"]["model"]["nhid"] == 32
    assert "rnns.0.lstm.weight_hh_l0" in checkpoint["model"]


def test_gather_run_matches_dense(dense_run, data_dir):
    root, _ = dense_run
    result = train(["embed_dropout=gather", f"hydra.run.dir={root / 'gather'}"], data_dir, root / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded cached corpus" in (root / "gather" / "train.log").read_text()
    dense, gather = scalars(root / "run"), scalars(root / "gather")
    for tag in ("train/loss", "val/loss", "test/loss"):
        assert gather[tag] == dense[tag], tag


def test_multirun_names_runs_by_override(data_dir, tmp_path):
    result = train(["-m", "embed_dropout=dense,gather", f"hydra.sweep.dir={tmp_path}"], data_dir, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(path.name for path in tmp_path.iterdir() if path.is_dir() and path.name != "cache")
    assert len(names) == 2
    assert names[0].startswith("0_embed_dropout=dense,")
    assert names[1].startswith("1_embed_dropout=gather,")
    assert "data_dir" not in names[0]


def test_invalid_value_fails_before_training(data_dir, tmp_path):
    result = train(["model.wdrop=2", f"hydra.run.dir={tmp_path / 'run'}"], data_dir, tmp_path / "cache")
    assert result.returncode != 0
    assert "invalid model.wdrop=2.0" in result.stderr
    assert not (tmp_path / "cache").exists()


def test_missing_corpus_names_path(tmp_path):
    # dataset.download=false: the test must not reach the public download sources.
    result = train(["dataset.download=false", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path / "nowhere", tmp_path / "cache")
    assert result.returncode != 0
    assert "ptb.train.txt" in result.stderr
    assert "dataset.download=false" in result.stderr


def run_files(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run folder with its contents, except train.log, to which each command appends."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != "train.log"
    }


def test_existing_run_dir_not_overwritten(dense_run, data_dir):
    root, _ = dense_run
    before = run_files(root / "run")
    result = train([f"hydra.run.dir={root / 'run'}", "trainer.limit_train_batches=3"], data_dir, root / "cache")
    assert result.returncode != 0
    assert "already contains a run" in result.stderr
    assert f"resume={root / 'run'}" in result.stderr
    assert ".hydra/overrides.yaml" in before
    assert run_files(root / "run") == before


def test_resume_finished_run_changes_nothing(dense_run, tmp_path):
    root, _ = dense_run
    before = run_files(root / "run")
    command = [sys.executable, "-m", "awdlm.train", f"resume={root / 'run'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "already finished at epoch 2" in result.stdout + result.stderr
    assert run_files(root / "run") == before
    assert list(tmp_path.iterdir()) == []  # no Hydra output folder beside the command


def test_user_error_without_traceback(data_dir, tmp_path):
    result = train(["model.dropout=1.5", f"hydra.run.dir={tmp_path / 'run'}"], data_dir, tmp_path / "cache")
    assert result.returncode == 1
    assert "invalid model.dropout=1.5" in result.stderr
    assert "Traceback" not in result.stderr
