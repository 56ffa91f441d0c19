"""Measure the training speed and memory of full AWD-LSTM training steps.

One step is forward, cross-entropy with AR and TAR, backward, gradient
clipping and the optimizer step, on consecutive windows of ``trainer.bptt``
tokens (no variable-length BPTT, so every step does the same work) from the
training split of the configured corpus::

    python scripts/benchmark.py experiment=ptb_cpu --steps 20 --warmup 3 --repeats 3
    python scripts/benchmark.py --experiment ptb_cpu ptb_paper --json speed.json
    python scripts/benchmark.py experiment=ptb_paper embed_dropout=gather --peer fastai --device cuda

Positional arguments are Hydra overrides of ``awdlm/conf``; ``--experiment``
runs the benchmark once per preset on top of them. After ``--warmup`` untimed
steps, ``--repeats`` runs of ``--steps`` steps each are timed, and the median
run gives ms/batch and tokens/s. ``step peak MiB`` is the peak of tensor bytes
allocated during one step beyond those alive before it (weights, optimizer
state, hidden state), measured as in ``bench_embed_dropout.py``: with the
CPU allocator's events in ``torch.profiler``, or ``torch.cuda.max_memory_allocated``.

``--peer fastai`` also measures ``fastai.text.models.awdlstm.AWD_LSTM`` with a
tied ``LinearDecoder`` at the same sizes, dropout rates, batch and optimizer.
fastai is not a dependency of awdlm; see ``docs/benchmarks.md`` for how to
install it next to the pinned torch.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bench_common
from awdlm.config import Config
from awdlm.data import batchify, get_batch
from awdlm.training.trainer import build_model, build_optimizer, resolve_device

FASTAI_INSTALL_HINT = (
    "install it without letting pip replace torch: pip install --no-deps fastai fastcore fastprogress "
    "fasttransform 'plum-dispatch<2.10', then pip install matplotlib pandas scipy scikit-learn "
    "cloudpickle fastdownload requests beartype rich (see docs/benchmarks.md)"
)


class AWDLSTMStepper:
    """An awdlm model and optimizer that train one (T, B) batch per call."""

    name = "awdlm"

    def __init__(self, config: Config, ntoken: int, device: torch.device) -> None:
        torch.manual_seed(config.seed)
        self.config = config
        self.model = build_model(config, ntoken).to(device).train()
        self.optimizer = build_optimizer(config, self.model)
        self.hidden = self.model.init_hidden(config.trainer.batch_size)

    def __call__(self, inputs: Tensor, targets: Tensor) -> None:
        self.hidden, _ = bench_common.train_step(
            self.model, self.optimizer, inputs, targets, self.hidden, self.config.trainer
        )


class FastaiStepper:
    """fastai's AWD-LSTM language model with the same sizes, dropout, loss terms and optimizer.

    fastai's model is batch-first, so each call transposes the (T, B)
    batch; its hidden state lives in the model and is detached there.
    """

    name = "fastai"

    def __init__(self, config: Config, ntoken: int, device: torch.device) -> None:
        from fastai.text.models.awdlstm import AWD_LSTM
        from fastai.text.models.core import LinearDecoder, SequentialRNN

        model_config = config.model
        torch.manual_seed(config.seed)
        encoder = AWD_LSTM(
            ntoken,
            model_config.emsize,
            model_config.nhid,
            model_config.nlayers,
            hidden_p=model_config.dropouth,
            input_p=model_config.dropouti,
            embed_p=config.embed_dropout.p,
            weight_p=model_config.wdrop,
        )
        # NOTE: fastai's last LSTM layer always has emsize units, so with
        # model.tied=false the two models differ in size (compare the parameter counts).
        decoder = LinearDecoder(
            ntoken,
            model_config.emsize,
            output_p=model_config.dropout,
            tie_encoder=encoder.encoder if model_config.tied else None,
        )
        self.config = config
        self.ntoken = ntoken
        self.model = SequentialRNN(encoder, decoder).to(device).train()
        self.model.reset()
        self.optimizer = build_optimizer(config, self.model)

    def __call__(self, inputs: Tensor, targets: Tensor) -> None:
        trainer = self.config.trainer
        group = self.optimizer.param_groups[0]
        base_lr = group["lr"]
        group["lr"] = base_lr * inputs.size(0) / trainer.bptt

        # The decoder returns the logits, the raw and the dropped last-layer output, all (B, T, ...).
        # With trainer.precision=bf16 the forward runs under the same autocast as awdlm's.
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=trainer.precision == "bf16"):
            logits, raw, dropped = self.model(inputs.t().contiguous())
        loss = F.cross_entropy(logits.float().reshape(-1, self.ntoken), targets.t().reshape(-1))
        if trainer.alpha:
            loss = loss + trainer.alpha * dropped.float().pow(2).mean()
        if trainer.beta:
            raw = raw.float()
            loss = loss + trainer.beta * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if trainer.clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), trainer.clip)
        self.optimizer.step()
        group["lr"] = base_lr


def import_fastai() -> None:
    """Exit with an install hint when fastai's AWD-LSTM cannot be imported."""
    try:
        import fastai.text.models.awdlstm  # noqa: F401
    except ImportError as error:
        sys.exit(f"--peer fastai: fastai.text.models.awdlstm failed to import ({error}); {FASTAI_INSTALL_HINT}")


def make_batches(train: Tensor, bptt: int, count: int) -> list[tuple[Tensor, Tensor]]:
    """``count`` consecutive full-length windows of ``train`` (N, B), wrapping at its end."""
    starts = range(0, train.size(0) - 1 - bptt, bptt)
    return [get_batch(train, starts[i % len(starts)], bptt) for i in range(count)]


def measure(
    steppers: list, batches: list[tuple[Tensor, Tensor]], args: argparse.Namespace, device: torch.device
) -> list[dict]:
    """Time ``args.repeats`` runs of ``args.steps`` steps per stepper after warm-up, then one step's peak memory.

    The runs of the steppers take turns (awdlm, peer, awdlm, peer, ...), so a
    change in machine speed during the benchmark affects all of them alike.
    """
    positions = [0] * len(steppers)

    def run(index: int, count: int) -> None:
        for _ in range(count):
            steppers[index](*batches[positions[index]])
            positions[index] += 1

    for index in range(len(steppers)):
        run(index, args.warmup)
    bench_common.synchronize(device)

    run_seconds: list[list[float]] = [[] for _ in steppers]
    for _ in range(args.repeats):
        for index in range(len(steppers)):
            start = time.perf_counter()
            run(index, args.steps)
            bench_common.synchronize(device)
            run_seconds[index].append(time.perf_counter() - start)

    results = []
    for index, stepper in enumerate(steppers):
        stepper.optimizer.zero_grad(set_to_none=True)  # gradients are allocated inside the measured step
        inputs, targets = batches[positions[index]]
        peak = bench_common.peak_bytes(lambda: stepper(inputs, targets), device)
        seconds = statistics.median(run_seconds[index])
        tokens = args.steps * inputs.numel()
        results.append({
            "model": stepper.name,
            "parameters": sum(p.numel() for p in stepper.model.parameters()),
            "tokens_per_s": tokens / seconds,
            "ms_per_batch": 1000 * seconds / args.steps,
            "ms_per_batch_runs": [1000 * s / args.steps for s in run_seconds[index]],
            "step_peak_mib": peak / bench_common.MIB,
        })
    return results


def benchmark_config(config: Config, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Measure awdlm, and the requested peer, on one composed config."""
    corpus = bench_common.load_config_corpus(config)
    trainer = config.trainer
    train = batchify(corpus.train, trainer.batch_size).to(device)  # (N, B)
    batches = make_batches(train, trainer.bptt, args.warmup + args.repeats * args.steps + 1)

    stepper_classes = [AWDLSTMStepper]
    if args.peer == "fastai":
        stepper_classes.append(FastaiStepper)
    steppers = [stepper_class(config, len(corpus.vocab), device) for stepper_class in stepper_classes]
    results = measure(steppers, batches, args, device)
    for result in results:
        result.update(
            vocab_size=len(corpus.vocab),
            emsize=config.model.emsize,
            nhid=config.model.nhid,
            nlayers=config.model.nlayers,
            tied=config.model.tied,
            batch_size=trainer.batch_size,
            bptt=trainer.bptt,
            train_rows=train.size(0),
            embed_dropout=config.embed_dropout.strategy,
            precision=trainer.precision,
        )
    return results


def format_results(results: list[dict]) -> str:
    headers = ["preset", "model", "precision", "params", "V", "batch", "tokens/s", "ms/batch", "step peak MiB"]
    headers.append("tokens/s vs fastai")
    fastai = {r["preset"]: r["tokens_per_s"] for r in results if r["model"] == "fastai"}
    rows = []
    for r in results:
        reference = fastai.get(r["preset"])
        rows.append([
            r["preset"],
            r["model"] if r["model"] == "fastai" else f"awdlm ({r['embed_dropout']})",
            r["precision"],
            f"{r['parameters'] / 1e6:.2f} M",
            r["vocab_size"],
            f"{r['bptt']} x {r['batch_size']}",
            f"{r['tokens_per_s']:.0f}",
            f"{r['ms_per_batch']:.1f}",
            f"{r['step_peak_mib']:.1f}",
            f"{r['tokens_per_s'] / reference:.2f}" if reference else "-",
        ])
    return bench_common.format_table(headers, rows)


def preset_name(overrides: list[str]) -> str:
    """Return the ``experiment=`` value among ``overrides``, or "defaults"."""
    for override in overrides:
        if override.startswith("experiment="):
            return override.split("=", 1)[1]
    return "defaults"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of awdlm/conf, e.g. experiment=ptb_cpu")
    parser.add_argument("--experiment", nargs="+", metavar="NAME", help="presets to run one after another")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the first run (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported (default 3)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--data-dir", default="data", help="folder with ptb/ and wikitext-2/ (default: data)")
    parser.add_argument("--peer", choices=("fastai",), help="also measure this implementation at the same sizes")
    parser.add_argument("--json", metavar="FILE", help="also write the machine, settings and results as JSON")
    args = parser.parse_intermixed_args(argv)
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"invalid --{name} {getattr(args, name)}: expected an integer >= 1")
    if args.warmup < 0:
        parser.error(f"invalid --warmup {args.warmup}: expected an integer >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.peer == "fastai":
        import_fastai()
    device = resolve_device(args.device)

    presets = args.experiment or [None]
    results = []
    for preset in presets:
        overrides = [f"data_dir={args.data_dir}", *args.overrides]
        if preset:
            overrides.append(f"experiment={preset}")
        config = bench_common.compose_config(overrides)
        for result in benchmark_config(copy.deepcopy(config), args, device):
            result["preset"] = preset or preset_name(args.overrides)
            result["overrides"] = overrides
            results.append(result)

    machine = bench_common.machine_description(device)
    print(f"machine: {bench_common.format_machine(machine)}")
    print(
        f"median of {args.repeats} run(s) of {args.steps} steps after {args.warmup} warm-up step(s); "
        f"overrides: {' '.join(args.overrides) or 'none'}"
    )
    print(format_results(results))
    report = {"machine": machine, "settings": vars(args), "results": results}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=2)
    return report


if __name__ == "__main__":
    bench_common.run_script(main)
