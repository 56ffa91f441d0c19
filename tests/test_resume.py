"""Checkpoints, kill-and-resume, signals, bad resume input and non-finite losses on real PTB."""

from __future__ import annotations

import math
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    assert_same_tensors,
    compose_config,
    load,
    module_command,
    run_module,
    snapshot,
    subprocess_env,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from awdlm.config import ConfigError
from awdlm.train import load_dataset, resume
from awdlm.training.checkpoint import CheckpointError, NonFiniteError, save_checkpoint
from awdlm.training.trainer import EpochProgress, Trainer

EPOCHS = 4
BATCHES = 40  # trainer.limit_train_batches in the tiny config
# Averaging starts after epoch 1, so a kill in epoch 2 or later must restore the running average.
RUN = [f"trainer.epochs={EPOCHS}", "trainer.checkpoint_every=3", "optim.average_after=1"]


def train_overrides(data_dir: Path, cache_dir: Path) -> list[str]:
    from helpers import TINY

    return [f"data_dir={data_dir}", f"cache_dir={cache_dir}", *TINY, *RUN]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("corpus-cache")


@pytest.fixture(scope="module")
def reference_run(data_dir, cache_dir, tmp_path_factory) -> Path:
    """An uninterrupted run of the tiny model."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = run_module("awdlm.train", run_dir, *train_overrides(data_dir, cache_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def start_training(run_dir: Path, data_dir: Path, cache_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        module_command("awdlm.train", run_dir, *train_overrides(data_dir, cache_dir)),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_step(process: subprocess.Popen, checkpoint: Path, step: int, timeout: float = 900) -> None:
    """Poll ``last.pt`` until it records at least ``step`` optimizer steps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"training ended before step {step}: {process.stderr.read()[-3000:]}"
        if checkpoint.is_file() and load(checkpoint)["step"] >= step:
            return
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint at step {step} within {timeout} s")


def scalar_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Read the TensorBoard scalars as TensorBoard shows them, purges applied."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_same_run(resumed: Path, reference: Path) -> None:
    final, expected = load(resumed / "last.pt"), load(reference / "last.pt")
    assert final["step"] == expected["step"]
    assert_same_tensors(final["model"], expected["model"])
    assert_same_tensors(final["averaged"], expected["averaged"])
    assert_same_tensors(load(resumed / "best.pt")["eval_model"], load(reference / "best.pt")["eval_model"])
    assert final["val_history"] == expected["val_history"]

    curves, expected_curves = scalar_curves(resumed), scalar_curves(reference)
    for tag, points in expected_curves.items():
        steps = [step for step, _ in curves[tag]]
        assert steps == sorted(set(steps)), f"{tag} has repeated or reversed steps: {steps}"
        assert steps == [step for step, _ in points], tag
        if not tag.startswith("throughput/"):
            assert [value for _, value in curves[tag]] == [value for _, value in points], tag


@pytest.mark.parametrize(
    "first_step, last_step",
    [(4, BATCHES - 5), (BATCHES + 5, 3 * BATCHES)],
    ids=["mid-epoch", "after-averaging-switch"],
)
def test_sigkill_resume_bit_identical(first_step, last_step, reference_run, data_dir, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    target = random.Random(first_step).randint(first_step, last_step)
    process = start_training(run_dir, data_dir, cache_dir)
    try:
        wait_for_step(process, run_dir / "last.pt", target)
    finally:
        process.kill()
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    killed_at = load(run_dir / "last.pt")
    assert killed_at["step"] < EPOCHS * BATCHES
    if first_step > BATCHES:
        assert killed_at["averaged"] is not None

    result = run_module("awdlm.train", tmp_path / "resume-invocation", f"resume={run_dir}", f"cache_dir={cache_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(run_dir, reference_run)


def test_sigterm_saves_and_resumes(reference_run, data_dir, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    process = start_training(run_dir, data_dir, cache_dir)
    try:
        wait_for_step(process, run_dir / "last.pt", BATCHES + 2)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=900)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM
    output = stdout + stderr  # Hydra logs to stdout
    assert f"Resume with: python -m awdlm.train resume={run_dir.resolve()}" in output
    assert "SIGTERM stopped training at " in output

    result = run_module("awdlm.train", tmp_path / "resume-invocation", f"resume={run_dir}", f"cache_dir={cache_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(run_dir, reference_run)


@pytest.fixture()
def finished_run(reference_run, tmp_path) -> Path:
    run_dir = tmp_path / "copy"
    shutil.copytree(reference_run, run_dir)
    return run_dir


def test_resume_missing_directory(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(CheckpointError, match="run directory not found"):
        resume(missing)
    assert not missing.exists()


def test_resume_without_checkpoint(finished_run):
    (finished_run / "last.pt").unlink()
    before = snapshot(finished_run)
    with pytest.raises(CheckpointError, match="no last.pt in"):
        resume(finished_run)
    assert snapshot(finished_run) == before


def test_resume_foreign_checkpoint(finished_run):
    state = load(finished_run / "last.pt")
    state["config"]["trainer"]["bptt"] = 35
    save_checkpoint(state, finished_run / "last.pt")
    before = snapshot(finished_run)
    with pytest.raises(CheckpointError, match=r"does not belong to this run.*trainer\.bptt"):
        resume(finished_run)
    assert snapshot(finished_run) == before


def test_resume_changed_override(finished_run, cache_dir):
    before = snapshot(finished_run)
    with pytest.raises(ConfigError, match=r"trainer\.bptt=35"):
        resume(finished_run, {"trainer.bptt": 35, "cache_dir": str(cache_dir)})
    assert snapshot(finished_run) == before


def test_resume_cli_missing_directory(tmp_path):
    result = run_module("awdlm.train", tmp_path / "invocation", f"resume={tmp_path / 'missing'}")
    assert result.returncode == 1
    assert "run directory not found" in result.stderr
    assert not (tmp_path / "missing").exists()


def test_nan_loss_changes_no_weight(data_dir, cache_dir, tmp_path):
    config = compose_config(data_dir, cache_dir, ["trainer.checkpoint_every=2", "trainer.epochs=1"])
    trainer = Trainer(config, load_dataset(config), tmp_path / "run")
    compute_loss = trainer.compute_loss
    batches = []

    def poisoned(inputs, targets, hidden):
        hidden, raw_loss, loss = compute_loss(inputs, targets, hidden)
        batches.append(len(batches) + 1)
        if len(batches) == 5:
            loss = loss * math.nan
        return hidden, raw_loss, loss

    trainer.compute_loss = poisoned
    with pytest.raises(NonFiniteError) as raised:
        trainer.fit()
    message = str(raised.value)
    assert "epoch 1, batch 5 (step 5)" in message
    # The check runs before the checkpoint at step 6, so step 6 was skipped too.
    assert "that step and the 1 after it changed no weight" in message
    assert f"the last good checkpoint is {tmp_path / 'run' / 'last.pt'}" in message

    last = load(tmp_path / "run" / "last.pt")
    assert last["step"] == 4
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    # The failed batch and the one after it changed no weight: the model still equals the step-4 checkpoint.
    assert_same_tensors({k: v.detach() for k, v in trainer.model.state_dict().items()}, last["model"])


def test_bf16_precision_trains(data_dir, cache_dir, tmp_path):
    config = compose_config(data_dir, cache_dir, ["trainer.precision=bf16", "trainer.limit_train_batches=5"])
    trainer = Trainer(config, load_dataset(config), tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.epoch, trainer.progress = 1, EpochProgress()
    result = trainer.train_epoch()

    assert 0 < result.loss < 15
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert "encoder.weight" in changed
    assert "rnns.0.lstm.weight_hh_l0" in changed


def test_checkpoint_rejects_nan(tmp_path):
    with pytest.raises(NonFiniteError, match=r"model\.weight contains NaN"):
        save_checkpoint({"model": {"weight": torch.tensor([1.0, math.nan])}}, tmp_path / "last.pt")
    assert not (tmp_path / "last.pt").exists()


def test_resume_extends_finished_run(finished_run, cache_dir):
    tested = load(finished_run / "last.pt")
    assert tested["final_metrics"] is not None

    metrics = resume(finished_run, {"trainer.epochs": EPOCHS + 1, "cache_dir": str(cache_dir)})
    extended = load(finished_run / "last.pt")
    assert extended["epoch"] == EPOCHS + 1
    assert extended["final_metrics"] == metrics
    assert f"epochs: {EPOCHS + 1}" in (finished_run / "config.yaml").read_text()
