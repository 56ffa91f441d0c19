"""Check embedding dropout and measure training speed on one CUDA GPU, in one run.

Three parts, then one summary:

1. Bit-identity: dense and gather embedding dropout train the Penn Treebank
   paper model in lockstep under ``torch.use_deterministic_algorithms(True)``;
   every parameter must be equal after every step.
2. Memory: ``bench_embed_dropout.py`` on CUDA at the PTB, WikiText-2 and
   WikiText-103 vocabulary sizes.
3. Speed: the PTB paper config (``experiment=ptb_paper``) trains
   ``--train-batches`` full-length batches with dense, with gather, and with
   gather under ``trainer.precision=bf16``. The script reports ms/batch,
   tokens/s, the projected seconds per epoch and how often cuDNN warned that
   it had to copy the LSTM weights into one buffer (0 is expected).

With the defaults the run is sized to finish in well under 8 minutes on one
current data-centre GPU (an estimate: the parts are a few hundred steps of a
24 M-parameter model)::

    python scripts/gpu_check.py --data-dir /path/to/corpora
    python scripts/gpu_check.py --device cpu --data-dir /path/to/corpora   # tiny dry run, no GPU needed

The script exits with status 1 when the bit-identity check fails or raises; the
other parts run either way.
"""

from __future__ import annotations

import os

# cuBLAS is deterministic only with a fixed workspace; it must be set before CUDA starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

import bench_common  # noqa: E402
import bench_embed_dropout  # noqa: E402
import benchmark  # noqa: E402
from awdlm.data import BPTTSampler, batchify, get_batch  # noqa: E402
from embed_dropout_drift import LockstepRun  # noqa: E402

# The dry run on CPU shrinks everything to seconds; it checks that the script works, not the figures.
DRY_RUN_OVERRIDES = ["model.emsize=16", "model.nhid=32", "trainer.batch_size=4", "trainer.bptt=10"]


def check_identity(config, train, ntoken: int, steps: int, device: torch.device) -> dict:
    """Train dense and gather in lockstep; return the first step where a parameter differs, if any."""
    runs = {strategy: LockstepRun(config, strategy, ntoken, device) for strategy in ("dense", "gather")}
    sampler = BPTTSampler(config.trainer.bptt, config.seed)
    position = 0
    first_difference = None
    for step in range(1, steps + 1):
        if position >= train.size(0) - 2:
            position = 0
        inputs, targets = get_batch(train, position, sampler.sample())  # (T, B) each
        position += inputs.size(0)
        for run in runs.values():
            run.step(inputs, targets)
        pairs = zip(runs["dense"].model.named_parameters(), runs["gather"].model.parameters())
        differing = [name for (name, p_dense), p_gather in pairs if not torch.equal(p_dense, p_gather)]
        if differing:
            first_difference = f"step {step}: {', '.join(differing)}"
            break
    return {"steps": steps, "identical": first_difference is None, "first_difference": first_difference}


def check_memory(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Run the embedding-dropout memory benchmark on ``device`` and print its table."""
    options = ["--devices", device.type, "--no-rss", "--repeats", "5"]
    if args.device == "cpu":
        options += ["--vocab-sizes", "2000", "--batch-size", "4", "--bptt", "10"]
    bench_args = bench_embed_dropout.parse_args(options)
    results = bench_embed_dropout.measure(bench_args, device)
    print(bench_embed_dropout.table(results, bench_args.emsize))
    return results


def check_speed(config, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Time training of the config with dense, gather and gather in bf16; add the projected seconds per epoch.

    Deterministic algorithms are off here, as in training. Each result counts
    the cuDNN warnings that the LSTM weights had to be copied into one buffer.
    """
    torch.use_deterministic_algorithms(False)
    timing = argparse.Namespace(steps=args.train_batches, warmup=args.warmup, repeats=1, peer=None)
    results = []
    for strategy, precision in (("dense", "fp32"), ("gather", "fp32"), ("gather", "bf16")):
        config.embed_dropout.strategy = strategy
        config.trainer.precision = precision
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            measured = benchmark.benchmark_config(config, timing, device)
        repacked = sum("contiguous chunk of memory" in str(warning.message) for warning in caught)
        for result in measured:
            result["batches_per_epoch"] = (result["train_rows"] - 1) // result["bptt"]
            result["projected_s_per_epoch"] = result["batches_per_epoch"] * result["ms_per_batch"] / 1000
            result["preset"] = "ptb_paper"
            result["precision"] = precision
            result["weight_copy_warnings"] = repacked
            results.append(result)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a tiny dry run (default cuda)")
    parser.add_argument("--data-dir", default="data", help="folder that contains ptb/ (default: data)")
    parser.add_argument("--identity-steps", type=int, default=200, help="lockstep steps of the check (default 200)")
    parser.add_argument("--train-batches", type=int, default=200, help="timed batches per strategy (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed batches before timing (default 20)")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        args.identity_steps = min(args.identity_steps, 5)
        args.train_batches = min(args.train_batches, 2)
        args.warmup = 1
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            f"CUDA is not available (torch {torch.__version__}, CUDA build {torch.version.cuda}): "
            "run this script on a machine with an NVIDIA GPU, or pass --device cpu for a tiny dry run"
        )
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    start = time.perf_counter()

    overrides = ["experiment=ptb_paper", f"data_dir={args.data_dir}", f"trainer.device={device.type}"]
    if device.type == "cpu":
        overrides += DRY_RUN_OVERRIDES
    config = bench_common.compose_config(overrides)
    corpus = bench_common.load_config_corpus(config)
    train = batchify(corpus.train, config.trainer.batch_size).to(device)  # (N, B)
    print(f"machine: {bench_common.format_machine(bench_common.machine_description(device))}")
    print(f"overrides: {' '.join(overrides)}")

    print(f"\n1. dense vs gather bit-identity, {args.identity_steps} steps, deterministic algorithms")
    try:
        identity = check_identity(config, train, len(corpus.vocab), args.identity_steps, device)
    except RuntimeError as error:  # e.g. an operation without a deterministic implementation
        identity = {"steps": args.identity_steps, "identical": False, "first_difference": f"error: {error}"}
    print("identical" if identity["identical"] else f"FAIL: {identity['first_difference']}")

    print("\n2. embedding dropout forward + backward, one call")
    memory = check_memory(args, device)

    print(f"\n3. training speed, {args.train_batches} batches after {args.warmup} warm-up batches")
    speed = check_speed(config, args, device)

    print(f"\nsummary ({time.perf_counter() - start:.0f} s in all):")
    verdict = "pass" if identity["identical"] else f"FAIL ({identity['first_difference']})"
    print(f"  bit-identity over {identity['steps']} steps: {verdict}")
    for vocab_size in sorted({r["vocab_size"] for r in memory}):
        rows = {r["case"]: r for r in memory if r["vocab_size"] == vocab_size}
        extra = {case: rows[case]["peak_bytes"] - rows["none"]["peak_bytes"] for case in ("dense", "gather")}
        print(
            f"  V={vocab_size}: extra peak over no dropout dense {extra['dense'] / bench_common.MIB:.1f} MiB, "
            f"gather {extra['gather'] / bench_common.MIB:.1f} MiB; time gather/dense "
            f"{rows['gather']['ms'] / rows['dense']['ms']:.2f}"
        )
    for r in speed:
        print(
            f"  ptb_paper {r['embed_dropout']} {r['precision']}: {r['ms_per_batch']:.1f} ms/batch, "
            f"{r['tokens_per_s']:.0f} tokens/s, projected {r['projected_s_per_epoch']:.0f} s/epoch "
            f"({r['batches_per_epoch']} batches of {r['bptt']} x {r['batch_size']})"
            + (f", cuDNN weight-copy warnings {r['weight_copy_warnings']}" if device.type == "cuda" else "")
        )
    if not identity["identical"]:
        sys.exit(1)
    return {"identity": identity, "memory": memory, "speed": speed}


if __name__ == "__main__":
    bench_common.run_script(main)
