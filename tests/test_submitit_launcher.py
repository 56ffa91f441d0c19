"""Hydra sweeps through hydra-submitit-launcher: the SLURM config composes, and a local sweep finishes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from helpers import CONF_DIR, subprocess_env

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[dev]' installs the launcher")

TINY = [
    "model.emsize=16",
    "model.nhid=32",
    "trainer.epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.device=cpu",
]


def test_slurm_launcher_config_composes():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.gpus_per_node == 1
    assert launcher.tasks_per_node == 1
    assert launcher.timeout_min == 1440
    assert launcher.partition is None
    assert launcher.max_num_timeout == 0


def test_submitit_local_sweep_finishes(data_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "awdlm.train",
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep_dir}",
        f"data_dir={data_dir}",
        f"cache_dir={tmp_path / 'cache'}",
        *TINY,
        "embed_dropout=dense,gather",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert result.returncode == 0, result.stderr[-4000:]

    runs = sorted(path for path in sweep_dir.iterdir() if path.is_dir() and not path.name.startswith("."))
    assert [run.name.split("_")[0] for run in runs] == ["0", "1"]
    for run in runs:
        assert (run / "best.pt").is_file(), f"{run} has no best.pt"
        log = (run / "train.log").read_text()
        assert "test loss" in log, f"{run} did not reach the test split"
    assert "embed_dropout=gather" in runs[1].name
