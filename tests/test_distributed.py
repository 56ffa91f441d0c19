"""Data-parallel runs of ``torchrun -m awdlm.train`` on two CPU processes (gloo) on real Penn Treebank."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import assert_same_tensors, subprocess_env

TINY = [
    "model.emsize=16",
    "model.nhid=32",
    "trainer.batch_size=10",
    "trainer.bptt=10",
    "trainer.epochs=2",
    "trainer.limit_train_batches=6",
    "trainer.limit_val_batches=4",
    "trainer.limit_test_batches=4",
    "trainer.log_interval=2",
    "trainer.checkpoint_every=4",
    "trainer.device=cpu",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(run_dir: Path, data_dir: Path, cache_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """Run ``awdlm.train`` on two gloo processes that meet on 127.0.0.1."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "awdlm.train",
        f"data_dir={data_dir}",
        f"cache_dir={cache_dir}",
        *TINY,
        *overrides,
        f"hydra.run.dir={run_dir}",
    ]
    env = {**subprocess_env(), "GLOO_SOCKET_IFNAME": "lo"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def two_rank_run(data_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("ddp")
    result = torchrun(root / "run", data_dir, root / "cache")
    assert result.returncode == 0, result.stderr[-4000:]
    return root, result


def test_two_ranks_keep_replicas_equal(two_rank_run):
    root, _ = two_rank_run
    log = (root / "run" / "train.log").read_text()
    assert "parameters identical on all 2 ranks" in log


def test_two_ranks_write_one_log(two_rank_run):
    root, _ = two_rank_run
    log = (root / "run" / "train.log").read_text()
    assert log.count("| val loss") == 2
    assert log.count("test loss") == 1
    assert log.count("data-parallel training on 2 processes, backend gloo") == 1
    # events.out.tfevents.<time>.<host>.<pid>.<n>: every event file comes from one process.
    writers = {path.name.split(".")[-2] for path in (root / "run").glob("events.out.tfevents.*")}
    assert len(writers) == 1


def test_two_rank_checkpoint_layout(two_rank_run):
    root, _ = two_rank_run
    best = torch.load(root / "run" / "best.pt", weights_only=True)
    last = torch.load(root / "run" / "last.pt", weights_only=True)
    assert "rnns.0.lstm.weight_hh_l0" in best["model"]
    assert not any(key.startswith("module.") for key in best["model"])
    assert best["model"].keys() == best["eval_model"].keys()
    assert len(last["rng"]["torch_ranks"]) == 2
    assert not torch.equal(last["rng"]["torch_ranks"][0], last["rng"]["torch_ranks"][1])
    assert last["step"] == 12


def test_two_rank_resume_matches_full_run(two_rank_run, data_dir):
    """One epoch, then a resume on two ranks for the second: the weights equal the two-epoch run's."""
    root, _ = two_rank_run
    split = root / "split"
    first = torchrun(split, data_dir, root / "cache", "trainer.epochs=1")
    assert first.returncode == 0, first.stderr[-4000:]
    second = torchrun(root / "resume_hydra", data_dir, root / "cache", f"resume={split}", "trainer.epochs=2")
    assert second.returncode == 0, second.stderr[-4000:]

    full = torch.load(root / "run" / "last.pt", weights_only=True)
    resumed = torch.load(split / "last.pt", weights_only=True)
    assert resumed["step"] == full["step"]
    assert_same_tensors(resumed["model"], full["model"])
    assert (split / "train.log").read_text().count("| val loss") == 2


def test_two_ranks_reject_odd_batch_size(data_dir, tmp_path):
    result = torchrun(tmp_path / "run", data_dir, tmp_path / "cache", "trainer.batch_size=9")
    assert result.returncode != 0
    assert "trainer.batch_size=9" in result.stderr
    assert "trainer.batch_size=8" in result.stderr
