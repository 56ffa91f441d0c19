"""Tiny-model configs and subprocess runs on the real corpora, shared by the recipe tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import awdlm
from awdlm.config import Config, to_config

CONF_DIR = Path(awdlm.__file__).parent / "conf"

# One intra-op thread in the test process as in its subprocesses: on a busy machine extra
# OpenMP threads mostly wait for each other, and one thread keeps the sums in one order.
torch.set_num_threads(1)

# A model small enough to train for a few hundred batches in seconds on one CPU core.
TINY = [
    "model.emsize=16",
    "model.nhid=32",
    "model.nlayers=2",
    "trainer.bptt=10",
    "trainer.batch_size=10",
    "trainer.eval_batch_size=10",
    "trainer.limit_train_batches=40",
    "trainer.limit_val_batches=5",
    "trainer.limit_test_batches=5",
    "trainer.log_interval=10",
    "trainer.device=cpu",
]


def compose_config(data_dir: Path, cache_dir: Path, overrides: list[str] = ()) -> Config:
    """Compose the real ``awdlm/conf`` with the tiny overrides, as ``python -m awdlm.train`` would."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[f"data_dir={data_dir}", f"cache_dir={cache_dir}", *TINY, *overrides],
        )
    return to_config(cfg)


def module_command(module: str, run_dir: Path, *overrides: str) -> list[str]:
    """Build ``python -m <module> ... hydra.run.dir=<run_dir>``."""
    return [sys.executable, "-m", module, *overrides, f"hydra.run.dir={run_dir}"]


def subprocess_env() -> dict[str, str]:
    """One intra-op thread, so two processes add floating-point numbers in the same order."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_module(module: str, run_dir: Path, *overrides: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        module_command(module, run_dir, *overrides),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_same_tensors(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), f"{key} differs"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its contents, to show that nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
