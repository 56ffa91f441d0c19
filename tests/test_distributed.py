"""Data-parallel runs of ``torchrun -m awdlm.train`` on two CPU processes (gloo) on real Penn Treebank."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
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


def torchrun_command(run_dir: Path, data_dir: Path, cache_dir: Path, *overrides: str) -> list[str]:
    return [
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


def torchrun_env() -> dict[str, str]:
    return {**subprocess_env(), "GLOO_SOCKET_IFNAME": "lo"}


def torchrun(run_dir: Path, data_dir: Path, cache_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """Run ``awdlm.train`` on two gloo processes that meet on 127.0.0.1."""
    command = torchrun_command(run_dir, data_dir, cache_dir, *overrides)
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=torchrun_env())


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


def test_two_rank_sigterm_resume_mid_epoch(data_dir, tmp_path):
    """SIGTERM to torchrun mid-epoch, resume on two ranks: the weights equal an uninterrupted run's."""
    run = ["trainer.epochs=1", "trainer.limit_train_batches=30", "trainer.checkpoint_every=3"]
    reference = torchrun(tmp_path / "reference", data_dir, tmp_path / "cache", *run)
    assert reference.returncode == 0, reference.stderr[-4000:]

    stopped = tmp_path / "stopped"
    command = torchrun_command(stopped, data_dir, tmp_path / "cache", *run)
    process = subprocess.Popen(command, env=torchrun_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (stopped / "last.pt").is_file():
        assert process.poll() is None, process.stderr.read()[-4000:]
        assert time.monotonic() < deadline, "no last.pt within 300 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0
    assert "SIGTERM stopped training at epoch 1" in (stopped / "train.log").read_text(), stderr[-4000:]

    state = torch.load(stopped / "last.pt", weights_only=True)
    assert state["progress"] is not None, "the signal arrived after the epoch; the test needs a mid-epoch stop"
    assert state["progress"]["hidden"][0][0].size(1) == 10  # all columns of both ranks

    resumed = torchrun(tmp_path / "resume_hydra", data_dir, tmp_path / "cache", *run, f"resume={stopped}")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    final = torch.load(stopped / "last.pt", weights_only=True)
    expected = torch.load(tmp_path / "reference" / "last.pt", weights_only=True)
    assert final["step"] == expected["step"]
    assert_same_tensors(final["model"], expected["model"])


def test_two_ranks_reject_odd_batch_size(data_dir, tmp_path):
    result = torchrun(tmp_path / "run", data_dir, tmp_path / "cache", "trainer.batch_size=9")
    assert result.returncode != 0
    assert "trainer.batch_size=9" in result.stderr
    assert "trainer.batch_size=8" in result.stderr
