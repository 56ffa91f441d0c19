"""The training loop: epochs of variable-length BPTT, validation, NT-ASGD and checkpoints."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from awdlm.config import Config, TrainerConfig, flatten
from awdlm.data import BPTTSampler, Corpus, batchify, get_batch
from awdlm.evaluation.scoring import bits_per_character, evaluate, perplexity
from awdlm.metrics import MetricsWriter
from awdlm.model.awd_lstm import (
    AWDLSTM,
    Hidden,
    activation_regularization,
    detach_hidden,
    temporal_activation_regularization,
)
from awdlm.training.averaging import NonMonotoneAveraging, stalled
from awdlm.training.checkpoint import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    NonFiniteError,
    load_checkpoint,
    save_checkpoint,
)
from awdlm.training.distributed import (
    ProcessGroup,
    gather_columns,
    max_over_ranks,
    mean_over_ranks,
    parameter_digests,
    rank_device,
    shard_columns,
    take_columns,
)

log = logging.getLogger(__name__)

RUN_CONFIG = "config.yaml"  # the resolved config of the run, beside its checkpoints

__all__ = ["BEST_CHECKPOINT", "LAST_CHECKPOINT", "Trainer", "TrainingInterrupted", "evaluate", "perplexity"]


def build_model(config: Config, ntoken: int) -> AWDLSTM:
    m = config.model
    return AWDLSTM(
        ntoken,
        emsize=m.emsize,
        nhid=m.nhid,
        nlayers=m.nlayers,
        dropout=m.dropout,
        dropouth=m.dropouth,
        dropouti=m.dropouti,
        dropoute=config.embed_dropout.p,
        wdrop=m.wdrop,
        tied=m.tied,
        embed_dropout=config.embed_dropout.strategy,
    )


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """Build the fused SGD or Adam, whose step can be skipped on the device (see :func:`clip_and_step`)."""
    optim = config.optim
    if optim.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=optim.lr, weight_decay=optim.wdecay, fused=True)
    return torch.optim.SGD(model.parameters(), lr=optim.lr, weight_decay=optim.wdecay, fused=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def config_to_dict(config: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(config))


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass
class EpochProgress:
    """Position in the current epoch, saved in ``last.pt`` so that a resumed run continues mid-epoch."""

    row: int = 0  # first row of the next BPTT window in the training columns
    batches: int = 0  # optimizer steps taken in this epoch
    hidden: Hidden | None = None  # state carried into the next window; None until the first batch
    # Sum over the epoch's tokens of the cross-entropy (nats) without AR/TAR: a float, or
    # a float64 tensor on the training device while an epoch runs.
    total_loss: float | Tensor = 0.0
    tokens: int = 0
    seconds: float = 0.0  # training time spent in this epoch, excluding validation

    def state_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "batches": self.batches,
            "hidden": None if self.hidden is None else [list(pair) for pair in self.hidden],
            "total_loss": float(self.total_loss),
            "tokens": self.tokens,
            "seconds": self.seconds,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device) -> EpochProgress:
        hidden = state["hidden"]
        if hidden is not None:
            hidden = [(h.to(device), c.to(device)) for h, c in hidden]
        return cls(state["row"], state["batches"], hidden, state["total_loss"], state["tokens"], state["seconds"])


@dataclass
class EpochResult:
    loss: float  # mean cross-entropy per token without AR/TAR, nats
    tokens: int
    seconds: float


@dataclass
class StopRequest:
    """The signal received since the last batch boundary, if any."""

    signum: int | None = None
    previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.debug("not on the main thread: SIGINT and SIGTERM keep their handlers")
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self.handle)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous.clear()

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            log.warning("%s received: saving a checkpoint at the next batch boundary", signal.Signals(signum).name)
        self.signum = signum



def training_loss(
    model: AWDLSTM | DistributedDataParallel, inputs: Tensor, targets: Tensor, hidden: Hidden, trainer: TrainerConfig
) -> tuple[Hidden, Tensor, Tensor]:
    """Run the forward pass; return the new hidden state, the cross-entropy and the loss with AR/TAR.

    With ``trainer.precision=bf16`` the forward pass runs under bfloat16
    autocast; the cross-entropy and the AR/TAR terms are computed in float32.
    """
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=trainer.precision == "bf16"):
        output = model(inputs, hidden, targets)
    raw_loss = loss = output.loss
    if trainer.alpha:
        loss = loss + activation_regularization(output.last_dropped, trainer.alpha)
    if trainer.beta:
        loss = loss + temporal_activation_regularization(output.last_raw, trainer.beta)
    return output.hidden, raw_loss, loss


def clip_and_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    losses: Tensor,
    seq_len: int,
    trainer: TrainerConfig,
    skip: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Clip the gradients and take the optimizer step; return the gradient norm and whether the step was skipped.

    Both are tensors on the device, the second a bool. The step is skipped
    when ``losses`` or the gradient norm is not finite, or when ``skip`` is
    True, and nothing waits for the device to decide it: the fused optimizers
    of :func:`build_optimizer` read ``optimizer.found_inf``, the flag that
    :class:`torch.amp.GradScaler` sets, and leave the weights and their state
    unchanged when it is 1. The learning rate is scaled by ``seq_len /
    trainer.bptt`` for this step only, because shorter windows carry less
    gradient signal.
    """
    parameters = [p for p in model.parameters() if p.grad is not None]
    if trainer.clip:
        grad_norm = nn.utils.clip_grad_norm_(parameters, trainer.clip, foreach=True)
    else:
        grad_norm = nn.utils.get_total_norm([p.grad for p in parameters], foreach=True)
    skipped = ~(torch.isfinite(losses).all() & torch.isfinite(grad_norm))
    if skip is not None:
        skipped = skipped | skip
    optimizer.found_inf = skipped.float()

    group = optimizer.param_groups[0]
    base_lr = group["lr"]
    group["lr"] = base_lr * seq_len / trainer.bptt
    optimizer.step()
    group["lr"] = base_lr
    return grad_norm, skipped


class Trainer:
    """Train an AWD-LSTM on a corpus and write logs and checkpoints into ``run_dir``.

    ``last.pt`` is written every ``trainer.checkpoint_every`` batches, at every
    epoch end and when SIGINT or SIGTERM arrives. :meth:`restore` loads it so
    that the resumed run takes exactly the steps the uninterrupted one would.
    ``first_epoch`` numbers the epochs of a run that continues another one
    (finetuning), so its curves continue the earlier run's.

    With a ``group`` of several ranks (``torchrun``), each rank trains on its
    share of the training columns and DistributedDataParallel averages the
    gradients. Every rank validates and tests on the whole split, and rank 0
    alone writes TensorBoard events and checkpoints.
    """

    def __init__(
        self, config: Config, corpus: Corpus, run_dir: Path, first_epoch: int = 1, group: ProcessGroup | None = None
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.group = group or ProcessGroup()
        self.device = rank_device(resolve_device(config.trainer.device), self.group)
        trainer = config.trainer

        torch.manual_seed(config.seed)
        self.vocab = corpus.vocab
        self.level = config.dataset.level
        # (N, B / world_size): this rank's contiguous share of the B columns.
        self.train_data = shard_columns(batchify(corpus.train, trainer.batch_size), self.group).to(self.device)
        self.val_data = batchify(corpus.valid, trainer.eval_batch_size).to(self.device)
        self.test_data = batchify(corpus.test, trainer.test_batch_size).to(self.device)

        # Every rank builds the same initial weights from config.seed ...
        self.model = build_model(config, len(self.vocab)).to(self.device)
        self.train_model: AWDLSTM | DistributedDataParallel = self.model
        if self.group.enabled:
            # ... and then draws its own dropout masks.
            torch.manual_seed(config.seed + self.group.rank)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids)
        self.optimizer = build_optimizer(config, self.model)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(config.optim.when), gamma=config.optim.lr_drop
        )
        self.averaging = NonMonotoneAveraging(config.optim.nonmono)
        self.sampler = BPTTSampler(trainer.bptt, config.seed)
        self.best_val_loss = math.inf
        self.first_epoch = first_epoch
        self.epoch = first_epoch - 1  # the epoch in progress, or the last one finished
        self.step = 0  # optimizer steps over the whole run
        self.progress: EpochProgress | None = None  # None between epochs
        self.epoch_metrics: dict[str, float] = {}  # the last finished epoch's scalars
        self.stalled = False
        # Tested when no epoch improves on best_val_loss: the weights a finetuning run started from.
        self.start_checkpoint: Path | None = None
        self.purge_step: int | None = None
        self.stop_request = StopRequest()
        self.writer: MetricsWriter | None = None
        self.final_metrics: dict[str, float] | None = None  # set once the best checkpoint was tested
        # Step number, loss and gradient norm of the first step whose loss or gradient norm was not
        # finite, kept on the device so that no step waits for it; -1 while every step was finite.
        self.first_failure = torch.full((3,), -1.0, dtype=torch.float64, device=self.device)

    @property
    def last_epoch(self) -> int:
        return self.first_epoch + self.config.trainer.epochs - 1

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / LAST_CHECKPOINT

    # -- one epoch ---------------------------------------------------------

    def train_epoch(self) -> EpochResult:
        """Run the rest of the current epoch's pass over the training columns with variable-length BPTT."""
        trainer = self.config.trainer
        progress = self.progress
        self.model.train()
        if progress.hidden is None:
            progress.hidden = self.model.init_hidden(self.train_data.size(1))
        limit = trainer.limit_train_batches
        rows = self.train_data.size(0)
        if limit is None:
            bar_total, bar_initial, bar_unit = (rows - 1) * trainer.batch_size, progress.row * trainer.batch_size, "tok"
        else:  # A capped epoch ends after `limit` batches, whatever their lengths, so the bar counts batches.
            bar_total, bar_initial, bar_unit = limit, progress.batches, "batch"
        bar = tqdm(
            total=bar_total,
            initial=bar_initial,
            desc=f"epoch {self.epoch}",
            unit=bar_unit,
            unit_scale=limit is None,
            leave=False,
            disable=not self.group.is_main,
        )
        try:
            with logging_redirect_tqdm():  # log records print above the bar, not inside it
                self.run_batches(bar)
        finally:
            bar.close()
        self.check_finite()
        progress.total_loss = float(progress.total_loss)
        return EpochResult(progress.total_loss / max(progress.tokens, 1), progress.tokens, progress.seconds)

    def run_batches(self, bar: tqdm) -> None:
        """Train on the epoch's remaining batches, updating ``bar``, ``self.progress`` and ``self.step``."""
        trainer = self.config.trainer
        progress = self.progress
        limit = trainer.limit_train_batches
        rows = self.train_data.size(0)
        interval_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        interval_tokens = 0
        start = interval_start = time.perf_counter()
        while progress.row < rows - 2 and (limit is None or progress.batches < limit):
            # With several ranks the ranks agree on a signal only at log lines, because that needs a collective.
            if not self.group.enabled or progress.batches % trainer.log_interval == 0:
                self.stop_if_requested(progress.seconds + time.perf_counter() - start)
            seq_len = self.sampler.sample()
            inputs, targets = get_batch(self.train_data, progress.row, seq_len)  # (T, B) each
            hidden, raw_loss = self.train_step(inputs, targets, progress.hidden)

            batch_tokens = targets.numel() * self.group.world_size  # tokens over all ranks
            batch_loss = raw_loss.detach().double() * batch_tokens
            progress.hidden = detach_hidden(hidden)
            # A tensor on the device until the next sync point, so that no step waits for the loss.
            progress.total_loss = progress.total_loss + batch_loss
            progress.tokens += batch_tokens
            progress.batches += 1
            progress.row += inputs.size(0)
            self.step += 1
            interval_loss += batch_loss
            interval_tokens += batch_tokens
            bar.update(batch_tokens if limit is None else 1)

            if progress.batches % trainer.log_interval == 0:
                self.check_finite()
                loss = interval_loss.item() / interval_tokens
                elapsed = time.perf_counter() - interval_start
                bar.set_postfix(
                    loss=f"{loss:.3f}",
                    ppl=f"{perplexity(loss):.1f}",
                    lr=f"{self.optimizer.param_groups[0]['lr']:.3g}",
                    ms_per_batch=f"{1000 * elapsed / trainer.log_interval:.0f}",
                )
                interval_loss.zero_()
                interval_tokens = 0
                interval_start = time.perf_counter()
            if self.step % trainer.checkpoint_every == 0:
                progress.seconds += time.perf_counter() - start
                start = time.perf_counter()
                self.save_last()
        progress.seconds += time.perf_counter() - start

    def compute_loss(self, inputs: Tensor, targets: Tensor, hidden: Hidden) -> tuple[Hidden, Tensor, Tensor]:
        """Run the forward pass; return the new hidden state, the raw loss and the loss with AR/TAR."""
        return training_loss(self.train_model, inputs, targets, hidden, self.config.trainer)

    def train_step(self, inputs: Tensor, targets: Tensor, hidden: Hidden) -> tuple[Hidden, Tensor]:
        """One forward, backward, clip and optimizer step; returns the new hidden state and the raw loss.

        With several ranks the returned raw loss is the mean over the ranks,
        and the gradients are already averaged when ``backward`` returns, so
        clipping acts on the same gradients on every rank.

        Nothing here waits for the device. A step whose loss or gradient norm
        is NaN or infinite on any rank changes no weight, and neither does any
        later step. :meth:`check_finite` raises NonFiniteError for it at the
        next log line, checkpoint or epoch end.
        """
        trainer = self.config.trainer
        hidden, raw_loss, loss = self.compute_loss(inputs, targets, hidden)

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # The mean over the ranks is NaN when any rank's loss is, so every rank skips together.
        losses = mean_over_ranks(torch.stack([raw_loss.detach().float(), loss.detach().float()]), self.group)
        failed_before = self.first_failure[0] >= 0
        grad_norm, skipped = clip_and_step(
            self.model, self.optimizer, losses, inputs.size(0), trainer, skip=failed_before
        )
        self.averaging.update(self.model)

        # Keep the step number, loss and gradient norm of the first failed step for the error message.
        # torch.full writes the step number on the device; torch.tensor would wait for a copy.
        step = torch.full((), self.step + 1, dtype=torch.float64, device=self.device)
        record = torch.stack([step, losses[1].double(), grad_norm.double()])
        self.first_failure = torch.where(skipped & ~failed_before, record, self.first_failure)
        return hidden, losses[0]

    def check_finite(self) -> None:
        """Raise NonFiniteError if a step since the last check had a NaN or infinite loss or gradient norm."""
        step, loss, grad_norm = self.first_failure.tolist()
        if step < 0:
            return
        step = int(step)
        batch = self.progress.batches - (self.step - step) if self.progress is not None else None
        position = f"batch {batch} (step {step})" if batch is not None and batch >= 1 else f"step {step}"
        if self.last_checkpoint.is_file():
            last_good = f"the last good checkpoint is {self.last_checkpoint}"
        else:
            last_good = "no checkpoint has been written yet"
        raise NonFiniteError(
            f"non-finite training loss ({loss}) or gradient norm ({grad_norm}) at epoch {self.epoch}, {position}; "
            f"that step and the {self.step - step} after it changed no weight, and {last_good}. "
            f"Lower optim.lr or trainer.clip, then resume with python -m awdlm.train resume={self.run_dir}"
        )

    def stop_if_requested(self, epoch_seconds: float) -> None:
        """Save ``last.pt`` and raise TrainingInterrupted when SIGINT or SIGTERM has arrived."""
        # torchrun forwards a signal to each rank at a slightly different time, so the ranks agree first.
        signum = max_over_ranks(self.stop_request.signum or 0, self.group, self.device)
        if signum == 0:
            return
        if self.progress is not None:
            self.progress.seconds = epoch_seconds
        self.save_last()
        position = (
            f"epoch {self.epoch}, batch {self.progress.batches}" if self.progress else f"the end of epoch {self.epoch}"
        )
        raise TrainingInterrupted(
            f"{signal.Signals(signum).name} stopped training at {position}; saved {self.last_checkpoint}. "
            f"Resume with: python -m awdlm.train resume={self.run_dir.resolve()}",
            signum,
        )

    # -- the whole run -------------------------------------------------------

    def fit(self) -> dict[str, float]:
        """Train until the last epoch or a stall, then test the best checkpoint; return the final metrics."""
        config = self.config
        if self.final_metrics is not None and self.progress is None and (self.stalled or self.epoch >= self.last_epoch):
            log.info(
                "%s already finished at epoch %d with test ppl %.2f, so nothing was trained or tested. "
                "To train on, resume with trainer.epochs=N for N > %d; to score it on the whole test split, "
                "run python -m awdlm.evaluate run=%s",
                self.run_dir,
                self.epoch,
                self.final_metrics["test/ppl"],
                config.trainer.epochs,
                self.run_dir,
            )
            return dict(self.final_metrics)
        if self.group.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # A resumed run may extend trainer.epochs, so the recorded config is written every time.
            OmegaConf.save(OmegaConf.structured(config), self.run_dir / RUN_CONFIG)
            self.writer = MetricsWriter(self.run_dir, purge_step=self.purge_step)
            if self.purge_step is not None and self.progress is None and self.epoch_metrics:
                # The purge also drops the scalars of the checkpoint's finished epoch; write them again.
                self.writer.scalars(self.epoch_metrics, self.epoch)
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info(
            "model: %d parameters, vocabulary %d, device %s, embed_dropout=%s",
            n_params,
            len(self.vocab),
            self.device,
            config.embed_dropout.strategy,
        )
        if config.optim.average_after == 0 and not self.averaging.active:
            log.info("averaging the weights from the first step (optim.average_after=0)")
            self.averaging.start(self.model)

        self.stop_request.install()
        try:
            while not self.stalled and (self.progress is not None or self.epoch < self.last_epoch):
                if self.progress is None:
                    self.epoch += 1
                    self.progress = EpochProgress()
                self.end_epoch(self.train_epoch())
                self.stop_if_requested(0.0)
            self.check_replicas()
            # Building the test model draws initial weights. The generators are restored afterwards, so a
            # resume that extends the run continues with the same random numbers as a longer run would.
            cuda_devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda_devices):
                self.final_metrics = self.finish()
            self.save_last()  # records the final metrics, so that resuming the finished run tests nothing again
            return dict(self.final_metrics)
        finally:
            self.stop_request.restore()
            if self.writer is not None:
                self.writer.close()

    def check_replicas(self) -> None:
        """Raise RuntimeError unless every rank ends training with bit-identical weights."""
        if not self.group.enabled:
            return
        digests = parameter_digests(self.model, self.group)
        if len(set(digests)) != 1:
            raise RuntimeError(f"the model replicas diverged: parameter SHA-256 by rank {digests}")
        log.info("parameters identical on all %d ranks (sha256 %s)", self.group.world_size, digests[0])

    def end_epoch(self, result: EpochResult) -> None:
        """Validate, update best.pt and the averaging switch, log the epoch and write last.pt."""
        config = self.config
        eval_model = self.averaging.eval_model(self.model)
        val_loss, _ = evaluate(eval_model, self.val_data, config.trainer.bptt, config.trainer.limit_val_batches)
        # Every rank scores the same split with the same weights; rank 0's value decides for all.
        val_loss = self.group.broadcast_object(val_loss)

        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss = val_loss
            self.progress = None
            self.save_checkpoint(self.run_dir / BEST_CHECKPOINT, val_loss)

        averaging_was_active = self.averaging.active
        if averaging_was_active and config.trainer.stop_when_stalled:
            self.stalled = stalled(self.averaging.history, val_loss, config.optim.nonmono)
        if config.optim.name == "ntasgd":
            triggered = self.averaging.observe(val_loss)
            forced = config.optim.average_after is not None and self.epoch >= config.optim.average_after
            if not self.averaging.active and (triggered or forced):
                reason = (
                    f"validation loss did not improve over the last {config.optim.nonmono} epochs"
                    if triggered
                    else f"optim.average_after={config.optim.average_after} epochs reached"
                )
                log.info("%s: averaging from now on", reason)
                self.averaging.start(self.model)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
        self.scheduler.step()

        self.epoch_metrics = {
            "train/loss": result.loss,
            "train/ppl": perplexity(result.loss),
            "val/loss": val_loss,
            "val/ppl": perplexity(val_loss),
            "optim/lr": lr,
            "optim/averaging": float(averaging_was_active),
            "throughput/tokens_per_s": result.tokens / max(result.seconds, 1e-9),
        }
        if self.level == "char":
            self.epoch_metrics["val/bpc"] = bits_per_character(val_loss)
        if self.writer is not None:
            self.writer.scalars(self.epoch_metrics, self.epoch)
        self.progress = None
        self.save_last()
        log.info(
            "epoch %d | %.1f s | %.0f tok/s | train loss %.3f ppl %.2f | val loss %.3f ppl %.2f%s | lr %.3g | averaging %s",
            self.epoch,
            result.seconds,
            result.tokens / max(result.seconds, 1e-9),
            result.loss,
            perplexity(result.loss),
            val_loss,
            perplexity(val_loss),
            " (best)" if improved else "",
            lr,
            "on" if averaging_was_active else "off",
        )
        if self.stalled:
            log.info(
                "averaged validation loss %.3f is worse than the best before the last %d epochs: stopping",
                val_loss,
                config.optim.nonmono,
            )

    def finish(self) -> dict[str, float]:
        """Evaluate the best checkpoint on the test split and log the final metrics."""
        config = self.config
        best = self.run_dir / BEST_CHECKPOINT
        if not best.is_file() and self.start_checkpoint is not None:
            log.info(
                "no epoch improved on the starting validation loss %.3f: testing %s",
                self.best_val_loss,
                self.start_checkpoint,
            )
            best = self.start_checkpoint

        checkpoint = load_checkpoint(best, self.device)
        test_model = build_model(config, len(self.vocab)).to(self.device)
        test_model.load_state_dict(checkpoint["eval_model"])
        test_loss, test_tokens = evaluate(
            test_model, self.test_data, config.trainer.bptt, config.trainer.limit_test_batches
        )

        metrics = {
            "best/val_loss": self.best_val_loss,
            "best/val_ppl": perplexity(self.best_val_loss),
            "test/loss": test_loss,
            "test/ppl": perplexity(test_loss),
        }
        if self.level == "char":
            metrics["test/bpc"] = bits_per_character(test_loss)

        # The metrics double as the final scalars, at the last epoch's step.
        if self.writer is not None:
            self.writer.hparams(flatten(config), metrics, step=self.epoch)
        log.info(
            "test loss %.3f ppl %.2f on %d tokens (best checkpoint, epoch %d, validation ppl %.2f)",
            test_loss,
            perplexity(test_loss),
            test_tokens,
            checkpoint["epoch"],
            perplexity(self.best_val_loss),
        )
        return metrics

    # -- checkpoints ---------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to take the same steps as an uninterrupted one.

        ``eval_model`` contains the weights that validation uses: the running
        average once NT-ASGD has switched, else the raw weights in ``model``.
        With several ranks every rank must call it, because it gathers the
        hidden state of all B columns and each rank's RNG states.
        """
        averaging = self.averaging.state_dict()
        progress = None if self.progress is None else self.progress.state_dict()
        if progress is not None and progress["hidden"] is not None:
            # (1, B / world_size, H) per rank -> (1, B, H), so the checkpoint covers every column.
            progress["hidden"] = [[gather_columns(t, self.group, dim=1) for t in pair] for pair in progress["hidden"]]
        rng = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "bptt": self.sampler.generator.get_state(),
        }
        if self.group.enabled:
            # Each rank draws its own dropout masks, so each rank's generator state is kept.
            rng["torch_ranks"] = self.group.all_gather_object(torch.get_rng_state())
            if self.device.type == "cuda":
                rng["cuda_ranks"] = self.group.all_gather_object(torch.cuda.get_rng_state(self.device).cpu())
        return {
            "model": self.model.state_dict(),
            "eval_model": self.averaging.eval_model(self.model).state_dict(),
            "averaged": averaging["averaged"],
            "val_history": averaging["history"],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "config": config_to_dict(self.config),
            "vocab": self.vocab.itos,
            "first_epoch": self.first_epoch,
            "epoch": self.epoch,
            "step": self.step,
            "progress": progress,
            "epoch_metrics": dict(self.epoch_metrics),
            "best_val_loss": self.best_val_loss,
            "stalled": self.stalled,
            "start_checkpoint": None if self.start_checkpoint is None else str(self.start_checkpoint),
            "rng": rng,
            "final_metrics": self.final_metrics,
        }

    def save_checkpoint(self, path: Path, val_loss: float) -> None:
        """Write :meth:`state_dict` plus the validation loss of ``eval_model`` to ``path`` atomically.

        Every rank calls it; rank 0 writes, and the others wait until the file is complete.
        """
        state = self.state_dict()
        if self.group.is_main:
            save_checkpoint({**state, "val_loss": val_loss}, path)
        self.group.barrier()

    def save_last(self) -> None:
        self.check_finite()
        state = self.state_dict()
        if self.group.is_main:
            save_checkpoint(state, self.last_checkpoint)
        self.group.barrier()
        log.debug("saved %s at epoch %d, step %d", self.last_checkpoint, self.epoch, self.step)

    def restore(self, state: dict[str, Any]) -> None:
        """Load a ``last.pt`` state: weights, optimizer, averaging, position and every RNG."""
        self.model.load_state_dict(state["model"])
        self.averaging.load_state_dict({"history": state["val_history"], "averaged": state["averaged"]}, self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.first_epoch = state["first_epoch"]
        self.epoch = state["epoch"]
        self.step = state["step"]
        self.best_val_loss = state["best_val_loss"]
        self.stalled = state["stalled"]
        self.start_checkpoint = None if state["start_checkpoint"] is None else Path(state["start_checkpoint"])
        self.epoch_metrics = dict(state["epoch_metrics"])
        self.final_metrics = state.get("final_metrics")
        progress = state["progress"]
        self.progress = None if progress is None else EpochProgress.from_state_dict(progress, self.device)
        if self.progress is not None and self.progress.hidden is not None:
            self.progress.hidden = [tuple(take_columns(t, self.group, dim=1) for t in pair) for pair in self.progress.hidden]
        # Scalars at or after this epoch were written after the checkpoint, so TensorBoard drops them.
        # A finished epoch's scalars come back from epoch_metrics in fit().
        self.purge_step = self.epoch

        rng = state["rng"]
        self.restore_dropout_rng(rng)
        self.sampler.generator.set_state(rng["bptt"].cpu())
        if self.progress is not None:
            log.info("resuming epoch %d at batch %d (step %d)", self.epoch, self.progress.batches, self.step)
        else:
            log.info("resuming after epoch %d (step %d)", self.epoch, self.step)

    def restore_dropout_rng(self, rng: dict[str, Any]) -> None:
        """Restore the generators behind the dropout masks; the BPTT sampler's is restored apart.

        A checkpoint of a run on several ranks contains each rank's states, and
        a run on the same number of ranks continues each rank's own stream. On
        another number of ranks, or from a single-process checkpoint, rank r
        reseeds with ``seed + r + step``: training continues, but its masks
        differ from those of an uninterrupted run.
        """
        if self.group.enabled:
            ranks = rng.get("torch_ranks", [])
            if len(ranks) == self.group.world_size:
                torch.set_rng_state(ranks[self.group.rank].cpu())
                cuda_ranks = rng.get("cuda_ranks", [])
                if self.device.type == "cuda" and len(cuda_ranks) == self.group.world_size:
                    torch.cuda.set_rng_state(cuda_ranks[self.group.rank].cpu(), self.device)
            else:
                log.warning(
                    "the checkpoint contains dropout RNG states for %d ranks, this run has %d: "
                    "reseeding rank r with seed + r + step, so the dropout masks differ from an uninterrupted run",
                    len(ranks) or 1,
                    self.group.world_size,
                )
                torch.manual_seed(self.config.seed + self.group.rank + self.step)
            return
        torch.set_rng_state(rng["torch"].cpu())
        if torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        elif rng["cuda"]:
            log.warning(
                "not restoring the CUDA RNG states: the checkpoint has %d devices, this machine %d",
                len(rng["cuda"]),
                torch.cuda.device_count() if torch.cuda.is_available() else 0,
            )
