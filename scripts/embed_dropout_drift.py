"""Train one small AWD-LSTM with dense, gather and naive embedding dropout in lockstep on PTB.

The three runs start from the same seed and see the same batches. Before each
run's step its own random-number state is restored and after the step it is
saved, so each run draws the same stream as it would alone. Every ``--every``
steps the script prints the largest absolute difference against ``dense`` of
the embedding gradient (after clipping, the one the optimizer applies) and of
all parameters, for a tied and then an untied decoder (or one of them)::

    python scripts/embed_dropout_drift.py --data-dir /path/to/corpora
    python scripts/embed_dropout_drift.py --steps 100 --untied --every 5
    python scripts/embed_dropout_drift.py --tied model.nhid=256 --logdir outputs/drift

``gather`` must stay at exactly 0; the script exits with status 1 if it does
not. ``naive`` is expected to drift. Trailing arguments are Hydra overrides of
the training config, applied after ``DEFAULT_OVERRIDES``. TensorBoard events
go to ``LOGDIR/{tied,untied}/STRATEGY`` with the same tags for every strategy.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

import bench_common
from awdlm.config import Config
from awdlm.data import BPTTSampler, batchify, get_batch
from awdlm.training.trainer import build_model, build_optimizer

STRATEGIES = ("dense", "gather", "naive")
# A model small enough that 3 runs x 500 steps x tied and untied take minutes on two CPU cores,
# with every size and dropout rate pinned so that changes to the presets do not change the run.
# The other settings are the defaults of awdlm/conf: seed 141, NT-ASGD at lr 30, clip 0.25, AR 2, TAR 1.
DEFAULT_OVERRIDES = [
    "model.emsize=32",
    "model.nhid=64",
    "model.nlayers=3",
    "model.dropout=0.25",
    "model.dropouth=0.15",
    "model.dropouti=0.15",
    "model.wdrop=0.25",
    "trainer.batch_size=10",
    "trainer.bptt=20",
    "embed_dropout.p=0.1",
]


class LockstepRun:
    """One model, optimizer, hidden state and random-number stream, stepped on demand."""

    def __init__(self, config: Config, strategy: str, ntoken: int, device: torch.device = torch.device("cpu")) -> None:
        config = copy.deepcopy(config)
        # "naive" is not a valid config value (the trainer rejects it), so it is set after validation.
        config.embed_dropout.strategy = strategy
        self.trainer = config.trainer
        torch.manual_seed(config.seed)
        self.model = build_model(config, ntoken).to(device)
        self.optimizer = build_optimizer(config, self.model)
        self.hidden = self.model.init_hidden(config.trainer.batch_size)
        self.rng = bench_common.RngStates.capture()

    def step(self, inputs: Tensor, targets: Tensor) -> float:
        """Run one training step with this run's random numbers; return the raw loss."""
        self.rng.restore()
        self.model.train()
        self.hidden, loss = bench_common.train_step(
            self.model, self.optimizer, inputs, targets, self.hidden, self.trainer
        )
        self.rng = bench_common.RngStates.capture()
        return loss.item()


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item()


def param_diff(run: LockstepRun, reference: LockstepRun) -> float:
    return max(
        max_abs_diff(p, q) for p, q in zip(run.model.parameters(), reference.model.parameters())
    )


@dataclass
class DriftSummary:
    """The largest differences against dense over a whole run, per strategy."""

    grad: dict[str, float] = field(default_factory=dict)
    param: dict[str, float] = field(default_factory=dict)
    first_nonzero_step: dict[str, int | None] = field(default_factory=dict)


def run_lockstep(config: Config, train: Tensor, ntoken: int, args: argparse.Namespace, logdir: Path | None) -> DriftSummary:
    """Step the three runs together for ``args.steps`` steps, printing and logging the differences."""
    runs = {strategy: LockstepRun(config, strategy, ntoken) for strategy in STRATEGIES}
    writers = {s: SummaryWriter(str(logdir / s)) for s in STRATEGIES} if logdir else {}
    sampler = BPTTSampler(config.trainer.bptt, config.seed)
    summary = DriftSummary()
    for strategy in STRATEGIES[1:]:
        summary.grad[strategy] = summary.param[strategy] = 0.0
        summary.first_nonzero_step[strategy] = None

    print("| step | dense loss | gather grad | gather params | naive grad | naive params |")
    print("| ---- | ---------- | ----------- | ------------- | ---------- | ------------ |")
    position = 0
    for step in range(1, args.steps + 1):
        if position >= train.size(0) - 2:
            position = 0  # wrap around; the hidden state carries on, as at an epoch boundary
        inputs, targets = get_batch(train, position, sampler.sample())  # (T, B) each
        position += inputs.size(0)
        losses = {strategy: run.step(inputs, targets) for strategy, run in runs.items()}

        dense = runs["dense"]
        grads, params = {"dense": 0.0}, {"dense": 0.0}
        for strategy in STRATEGIES[1:]:
            run = runs[strategy]
            grads[strategy] = max_abs_diff(run.model.encoder.weight.grad, dense.model.encoder.weight.grad)
            params[strategy] = param_diff(run, dense)
            summary.grad[strategy] = max(summary.grad[strategy], grads[strategy])
            summary.param[strategy] = max(summary.param[strategy], params[strategy])
            if summary.first_nonzero_step[strategy] is None and (grads[strategy] or params[strategy]):
                summary.first_nonzero_step[strategy] = step

        for strategy, writer in writers.items():
            writer.add_scalar("train/loss", losses[strategy], step)
            writer.add_scalar("drift/embedding_grad_max_abs_diff", grads[strategy], step)
            writer.add_scalar("drift/param_max_abs_diff", params[strategy], step)
        if step % args.every == 0 or step == args.steps:
            print(
                f"| {step} | {losses['dense']:.4f} | {grads['gather']:.3g} | {params['gather']:.3g} "
                f"| {grads['naive']:.3g} | {params['naive']:.3g} |",
                flush=True,
            )
    for writer in writers.values():
        writer.close()
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, applied after DEFAULT_OVERRIDES")
    parser.add_argument("--steps", type=int, default=500, help="training steps per run (default 500)")
    parser.add_argument("--every", type=int, default=10, help="print a table row every this many steps (default 10)")
    tying = parser.add_mutually_exclusive_group()
    tying.add_argument("--tied", dest="tying", action="store_const", const=["tied"], help="tied decoder only")
    tying.add_argument("--untied", dest="tying", action="store_const", const=["untied"], help="untied decoder only")
    parser.add_argument("--data-dir", default="data", help="folder that contains ptb/ (default: data)")
    parser.add_argument("--logdir", type=Path, help="write TensorBoard events under this folder (default: none)")
    args = parser.parse_intermixed_args(argv)
    args.tying = args.tying or ["tied", "untied"]  # neither flag: both, tied first
    if args.steps < 1 or args.every < 1:
        parser.error(f"--steps {args.steps} and --every {args.every} must be integers >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, DriftSummary]:
    args = parse_args(argv)
    overrides = [*DEFAULT_OVERRIDES, f"data_dir={args.data_dir}", "trainer.device=cpu", *args.overrides]
    base = bench_common.compose_config(overrides)
    corpus = bench_common.load_config_corpus(base)
    train = batchify(corpus.train, base.trainer.batch_size)  # (N, B)
    print(f"machine: {bench_common.format_machine(bench_common.machine_description(torch.device('cpu')))}")
    print(f"overrides: {' '.join(overrides)}")

    summaries = {}
    for tying in args.tying:
        config = copy.deepcopy(base)
        config.model.tied = tying == "tied"
        print(f"\n{tying} decoder, {args.steps} steps, largest |difference| against dense:")
        logdir = args.logdir / tying if args.logdir else None
        summaries[tying] = run_lockstep(config, train, len(corpus.vocab), args, logdir)

    print()
    failed = False
    for tying, summary in summaries.items():
        for strategy in STRATEGIES[1:]:
            first = summary.first_nonzero_step[strategy]
            print(
                f"{tying} {strategy}: max embedding grad diff {summary.grad[strategy]:.3g}, "
                f"max param diff {summary.param[strategy]:.3g}, first nonzero at step {first or 'none'}"
            )
        failed |= summary.first_nonzero_step["gather"] is not None
    if failed:
        print("FAILED: gather differs from dense", file=sys.stderr)
        sys.exit(1)
    return summaries


if __name__ == "__main__":
    bench_common.run_script(main)
