"""Measure peak memory and time of one embedding-dropout forward and backward.

Cases: ``none`` (a plain lookup, no dropout), ``dense``, ``gather`` and
``naive`` (see ``awdlm/model/embedding_dropout.py``), each at the vocabulary
sizes of Penn Treebank (10,000), WikiText-2 (33,278) and WikiText-103
(267,735) with 400-wide embeddings and a batch of 80 x 70 tokens::

    python scripts/bench_embed_dropout.py
    python scripts/bench_embed_dropout.py --devices cpu --vocab-sizes 10000 --repeats 3
    python scripts/bench_embed_dropout.py --json embed_dropout.json

One measured call builds the embedding output from a (V, D) weight and runs
its backward with a fixed (T, B, D) output gradient, so the weight gradient is
the only (V, D) tensor that ``none`` allocates.

How peak memory is measured:

* CUDA: ``torch.cuda.max_memory_allocated`` minus the bytes allocated before
  the call.
* CPU (``peak`` column): the allocation and free events that PyTorch's CPU
  allocator reports to ``torch.profiler`` with ``profile_memory=True``, summed
  in order. This counts exactly the bytes of tensors alive at once beyond the
  inputs, and it is the same on every run of the same case.
* CPU (``rss`` column, a cross-check): a fresh subprocess per case builds the
  inputs and runs the call once to warm up. It then resets its peak resident
  set size (writing 5 to ``/proc/self/clear_refs``), runs the call again and
  reports the growth of the peak (``VmHWM``, or ``ru_maxrss`` where /proc is
  missing).
  Without the reset, the peak left by importing the libraries hides growths
  of tens of MiB. RSS counts pages that the C allocator keeps or reuses after
  a free, and it misses allocations that were never touched. It therefore
  agrees with the profiler only where large tensors dominate, and the tables
  use the profiler.

Times are the median wall time of ``--repeats`` calls after ``--warmup``
calls. Ratios compare each case with ``dense``; the "extra" columns subtract
the ``none`` case, which leaves what embedding dropout itself costs.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import bench_common
from awdlm.model.embedding_dropout import embedding_dropout

CASES = ("none", "dense", "gather", "naive")
VOCAB_SIZES = {"ptb": 10_000, "wikitext2": 33_278, "wikitext103": 267_735}


class EmbedCall:
    """The inputs of one case and one call of forward and backward on them."""

    def __init__(self, case: str, vocab_size: int, args: argparse.Namespace, device: torch.device) -> None:
        generator = torch.Generator().manual_seed(0)
        self.case = case
        self.p = args.p
        self.weight = torch.empty(vocab_size, args.emsize).uniform_(-0.1, 0.1, generator=generator)
        self.weight = self.weight.to(device).requires_grad_()
        self.words = torch.randint(vocab_size, (args.bptt, args.batch_size), generator=generator).to(device)
        self.grad_output = torch.randn(args.bptt, args.batch_size, args.emsize, generator=generator).to(device)

    def __call__(self) -> None:
        self.weight.grad = None  # the call allocates the (V, D) gradient itself, as a training step does
        if self.case == "none":
            output = F.embedding(self.words, self.weight)
        else:
            output = embedding_dropout(self.words, self.weight, self.p, strategy=self.case)
        output.backward(self.grad_output)  # output: (T, B, D)


def time_call(call: EmbedCall, device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of one call."""
    for _ in range(warmup):
        call()
    bench_common.synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        bench_common.synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def rss_growth_bytes(case: str, vocab_size: int, args: argparse.Namespace) -> int:
    """Run one call of ``case`` in a fresh interpreter and return the growth of its peak RSS."""
    command = [
        sys.executable,
        __file__,
        "--rss-worker",
        case,
        "--vocab-sizes",
        str(vocab_size),
        "--emsize",
        str(args.emsize),
        "--batch-size",
        str(args.batch_size),
        "--bptt",
        str(args.bptt),
        "--p",
        str(args.p),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"RSS worker for case {case}, V={vocab_size} failed:\n{result.stderr}")
    return int(result.stdout.strip().splitlines()[-1])


def peak_rss_bytes() -> int:
    """This process's peak resident set size: VmHWM on Linux, else ``ru_maxrss`` (KiB on Linux)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as file:
            for line in file:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """Lower the peak RSS to the current RSS (Linux 4.0 and later), so imports do not set the baseline."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as file:
            file.write("5")
    except OSError:
        pass  # the growth is then measured from the import-time peak and may read low


def run_rss_worker(args: argparse.Namespace) -> None:
    """Print the growth of this process's peak RSS over one call, in bytes."""
    call = EmbedCall(args.rss_worker, args.vocab_sizes[0], args, torch.device("cpu"))
    call()  # lazy initialisation and thread pools, left out of the measurement
    call.weight.grad = None
    reset_peak_rss()
    before = peak_rss_bytes()
    call()
    print(peak_rss_bytes() - before)


def measure(args: argparse.Namespace, device: torch.device) -> list[dict[str, object]]:
    """Measure every case at every vocabulary size on one device."""
    results = []
    for vocab_size in args.vocab_sizes:
        for case in CASES:
            call = EmbedCall(case, vocab_size, args, device)
            call()  # first call outside the measurement: lazy initialisation and thread pools
            call.weight.grad = None  # else freeing it inside the measured call would lower the peak
            row: dict[str, object] = {
                "device": device.type,
                "vocab_size": vocab_size,
                "case": case,
                "peak_bytes": bench_common.peak_bytes(call, device),
                "ms": time_call(call, device, args.warmup, args.repeats),
            }
            results.append(row)
            del call
    # The subprocesses run after all timing, so they cannot disturb it.
    if device.type == "cpu" and args.rss:
        for row in results:
            row["rss_bytes"] = rss_growth_bytes(row["case"], row["vocab_size"], args)
    return results


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}" if reference else "-"


def table(results: list[dict[str, object]], emsize: int) -> str:
    """Render one row per case, with ratios to ``dense`` and extras over ``none`` at the same size."""
    reference = {(r["device"], r["vocab_size"], r["case"]): r for r in results}
    headers = ["device", "V", "V x D MiB", "case", "peak MiB", "extra MiB", "extra / dense", "ms", "ms / dense"]
    with_rss = any("rss_bytes" in r for r in results)
    if with_rss:
        headers.append("rss MiB")
    rows = []
    for r in results:
        key = (r["device"], r["vocab_size"])
        dense, none = reference[(*key, "dense")], reference[(*key, "none")]
        extra = r["peak_bytes"] - none["peak_bytes"]
        dense_extra = dense["peak_bytes"] - none["peak_bytes"]
        row = [
            r["device"],
            r["vocab_size"],
            f"{r['vocab_size'] * emsize * 4 / bench_common.MIB:.1f}",
            r["case"],
            f"{r['peak_bytes'] / bench_common.MIB:.2f}",
            f"{extra / bench_common.MIB:.2f}",
            ratio(extra, dense_extra) if r["case"] != "none" else "-",
            f"{r['ms']:.2f}",
            ratio(r["ms"], dense["ms"]),
        ]
        if with_rss:
            row.append(f"{r['rss_bytes'] / bench_common.MIB:.1f}" if "rss_bytes" in r else "-")
        rows.append(row)
    return bench_common.format_table(headers, rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--vocab-sizes",
        type=int,
        nargs="+",
        default=list(VOCAB_SIZES.values()),
        help="vocabulary sizes V (default: PTB, WikiText-2 and WikiText-103)",
    )
    parser.add_argument("--emsize", type=int, default=400, help="embedding width D (default 400)")
    parser.add_argument("--batch-size", type=int, default=80, help="batch columns B (default 80)")
    parser.add_argument("--bptt", type=int, default=70, help="tokens per column T (default 70)")
    parser.add_argument("--p", type=float, default=0.1, help="embedding dropout probability (default 0.1)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (default 3)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls; the median is reported (default 10)")
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=("cpu", "cuda"),
        default=None,
        help="devices to measure (default: cpu, and cuda when available)",
    )
    parser.add_argument("--no-rss", dest="rss", action="store_false", help="skip the RSS cross-check on CPU")
    parser.add_argument("--json", metavar="FILE", help="also write the machine and the results as JSON to FILE")
    parser.add_argument("--rss-worker", choices=CASES, help=argparse.SUPPRESS)  # internal: one RSS measurement
    args = parser.parse_args(argv)
    if not 0 <= args.p < 1:
        parser.error(f"invalid --p {args.p}: expected a probability in [0, 1)")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    args = parse_args(argv)
    if args.rss_worker:
        run_rss_worker(args)
        return []

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        sys.exit("CUDA is not available to this PyTorch build or machine: rerun with --devices cpu")

    report = []
    for name in devices:
        device = torch.device(name)
        machine = bench_common.machine_description(device)
        results = measure(args, device)
        print(f"machine: {bench_common.format_machine(machine)}")
        print(f"batch {args.bptt} x {args.batch_size} tokens, D={args.emsize}, p={args.p}, "
              f"median of {args.repeats} after {args.warmup} warm-up calls")
        print(table(results, args.emsize))
        print()
        report.append({"machine": machine, "results": results})

    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({"settings": vars(args), "runs": report}, file, indent=2)
    return [row for run in report for row in run["results"]]


if __name__ == "__main__":
    bench_common.run_script(main)
