"""The benchmark scripts in scripts/ run end to end at tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, timeout=1800, check=False
    )


def parse_drift_rows(stdout: str) -> list[list[str]]:
    """The cells of every numeric row of the drift tables."""
    rows = []
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].isdigit():
            rows.append(cells)
    return rows


def test_drift_gather_exact_naive_drifts(data_dir, tmp_path):
    result = run_script(
        "embed_dropout_drift.py", "--steps", "20", "--every", "1", "--data-dir", str(data_dir), "--logdir", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    rows = parse_drift_rows(result.stdout)
    assert len(rows) == 40, result.stdout  # 20 steps, tied and untied
    assert all(float(row[2]) == 0 and float(row[3]) == 0 for row in rows), "gather differs from dense"
    assert any(float(row[5]) != 0 for row in rows), "naive never drifted from dense"
    for tying in ("tied", "untied"):
        for strategy in ("dense", "gather", "naive"):
            assert list((tmp_path / tying / strategy).glob("events.out.tfevents.*")), f"no events for {tying}/{strategy}"


def test_memory_bench_gather_below_dense(tmp_path):
    output = tmp_path / "memory.json"
    result = run_script(
        "bench_embed_dropout.py",
        *("--devices", "cpu", "--vocab-sizes", "20000", "--batch-size", "8", "--bptt", "10"),
        *("--warmup", "0", "--repeats", "1", "--json", str(output)),
    )
    assert result.returncode == 0, result.stderr
    rows = {row["case"]: row for row in json.loads(output.read_text())["runs"][0]["results"]}
    assert set(rows) == {"none", "dense", "gather", "naive"}
    assert rows["gather"]["peak_bytes"] < rows["dense"]["peak_bytes"]
    # dense allocates a second (V, D) tensor, gather only a few (T, B, D) and (V, 1) ones.
    vocab_by_width = 20000 * 400 * 4
    assert rows["dense"]["peak_bytes"] - rows["none"]["peak_bytes"] >= vocab_by_width
    assert rows["gather"]["peak_bytes"] - rows["none"]["peak_bytes"] < vocab_by_width / 10
    assert all(row["rss_bytes"] >= 0 for row in rows.values())  # the cross-check ran in its subprocesses


def test_benchmark_writes_json(data_dir, tmp_path):
    output = tmp_path / "speed.json"
    result = run_script(
        "benchmark.py",
        *("experiment=ptb_cpu", "model.emsize=16", "model.nhid=32", "trainer.batch_size=4", "trainer.bptt=10"),
        *("--steps", "2", "--warmup", "1", "--repeats", "2", "--device", "cpu"),
        *("--data-dir", str(data_dir), "--json", str(output)),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text())
    assert {"cpu", "torch", "logical_cores"} <= set(report["machine"])
    (row,) = report["results"]
    expected = {"model", "preset", "parameters", "tokens_per_s", "ms_per_batch", "ms_per_batch_runs", "step_peak_mib"}
    assert expected <= set(row)
    assert (row["model"], row["preset"], row["batch_size"], row["bptt"]) == ("awdlm", "ptb_cpu", 4, 10)
    assert len(row["ms_per_batch_runs"]) == 2
    assert row["tokens_per_s"] > 0
    assert row["step_peak_mib"] > 0


def test_gpu_check_cpu_dry_run(data_dir):
    result = run_script("gpu_check.py", "--device", "cpu", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    assert "bit-identity over 5 steps: pass" in result.stdout
    assert "ptb_paper gather" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is only printed on machines without CUDA")
def test_gpu_check_without_cuda_explains():
    result = run_script("gpu_check.py")
    assert result.returncode != 0
    assert "--device cpu" in result.stderr
