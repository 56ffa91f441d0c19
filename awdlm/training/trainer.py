"""The training loop: epochs of variable-length BPTT, validation, NT-ASGD and checkpoints."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn
from tqdm import tqdm

from awdlm.config import Config, flatten
from awdlm.data import BPTTSampler, Corpus, batchify, get_batch
from awdlm.metrics import MetricsWriter
from awdlm.model.awd_lstm import (
    AWDLSTM,
    activation_regularization,
    detach_hidden,
    temporal_activation_regularization,
)
from awdlm.serialization import save_atomic
from awdlm.training.averaging import NonMonotoneAveraging

log = logging.getLogger(__name__)

BEST_CHECKPOINT = "best.pt"


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
    optim = config.optim
    if optim.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=optim.lr, weight_decay=optim.wdecay)
    return torch.optim.SGD(model.parameters(), lr=optim.lr, weight_decay=optim.wdecay)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def evaluate(model: AWDLSTM, source: Tensor, bptt: int, limit: int | None = None) -> tuple[float, int]:
    """Return the mean cross-entropy per token (nats) over ``source`` and the tokens scored.

    ``source`` is batchified, ``(N, B)``; it is read in fixed windows of
    ``bptt`` rows with the hidden state carried across windows.
    """
    model.eval()
    hidden = model.init_hidden(source.size(1))
    total_loss = torch.zeros((), device=source.device, dtype=torch.float64)
    tokens = 0
    for window, i in enumerate(range(0, source.size(0) - 1, bptt)):
        if limit is not None and window >= limit:
            break
        inputs, targets = get_batch(source, i, bptt)  # (T, B) each
        output = model(inputs, hidden)
        hidden = output.hidden
        logits = output.logits.view(-1, model.ntoken)  # (T * B, V)
        total_loss += F.cross_entropy(logits, targets.reshape(-1), reduction="sum")
        tokens += targets.numel()
    return total_loss.item() / tokens, tokens


def perplexity(loss: float) -> float:
    """exp(loss), saturating at inf instead of raising on overflow."""
    return math.exp(loss) if loss < 700 else math.inf


@dataclass
class EpochResult:
    loss: float  # mean cross-entropy per token without AR/TAR, nats
    tokens: int
    seconds: float


class Trainer:
    """Train an AWD-LSTM on a corpus and write logs and checkpoints into ``run_dir``."""

    def __init__(self, config: Config, corpus: Corpus, run_dir: Path) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = resolve_device(config.trainer.device)
        trainer = config.trainer

        torch.manual_seed(config.seed)
        self.vocab = corpus.vocab
        self.train_data = batchify(corpus.train, trainer.batch_size).to(self.device)  # (N, B)
        self.val_data = batchify(corpus.valid, trainer.eval_batch_size).to(self.device)
        self.test_data = batchify(corpus.test, trainer.test_batch_size).to(self.device)

        self.model = build_model(config, len(self.vocab)).to(self.device)
        self.optimizer = build_optimizer(config, self.model)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(config.optim.when), gamma=config.optim.lr_drop
        )
        self.averaging = NonMonotoneAveraging(config.optim.nonmono)
        self.sampler = BPTTSampler(trainer.bptt, config.seed)
        self.best_val_loss = math.inf
        self.epoch = 0
        self.writer: MetricsWriter | None = None

    # -- one epoch ---------------------------------------------------------

    def train_epoch(self) -> EpochResult:
        """Run one pass over the training columns with variable-length BPTT."""
        trainer = self.config.trainer
        model, optimizer = self.model, self.optimizer
        model.train()
        hidden = model.init_hidden(trainer.batch_size)
        limit = trainer.limit_train_batches
        rows = self.train_data.size(0)
        total_tokens = (rows - 1) * trainer.batch_size

        total_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        interval_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        tokens = interval_tokens = batches = 0
        start = interval_start = time.perf_counter()
        bar = tqdm(total=total_tokens, desc=f"epoch {self.epoch}", unit="tok", unit_scale=True, leave=False)
        i = 0
        while i < rows - 2 and (limit is None or batches < limit):
            seq_len = self.sampler.sample()
            inputs, targets = get_batch(self.train_data, i, seq_len)  # (T, B) each
            hidden, raw_loss = self.train_step(inputs, targets, detach_hidden(hidden))

            batch_tokens = targets.numel()
            total_loss += raw_loss.detach() * batch_tokens
            interval_loss += raw_loss.detach() * batch_tokens
            tokens += batch_tokens
            interval_tokens += batch_tokens
            batches += 1
            i += inputs.size(0)
            bar.update(batch_tokens)

            if batches % trainer.log_interval == 0:
                loss = interval_loss.item() / interval_tokens  # the one host sync per interval
                elapsed = time.perf_counter() - interval_start
                bar.set_postfix(
                    loss=f"{loss:.3f}",
                    ppl=f"{perplexity(loss):.1f}",
                    lr=f"{optimizer.param_groups[0]['lr']:.3g}",
                    ms_per_batch=f"{1000 * elapsed / trainer.log_interval:.0f}",
                )
                interval_loss.zero_()
                interval_tokens = 0
                interval_start = time.perf_counter()
        bar.close()
        return EpochResult(total_loss.item() / max(tokens, 1), tokens, time.perf_counter() - start)

    def train_step(self, inputs: Tensor, targets: Tensor, hidden) -> tuple[list, Tensor]:
        """One forward, backward, clip and optimizer step; returns the new hidden state and the raw loss."""
        trainer = self.config.trainer
        group = self.optimizer.param_groups[0]
        base_lr = group["lr"]
        # Shorter windows carry less gradient signal, so the step size follows the length.
        group["lr"] = base_lr * inputs.size(0) / trainer.bptt

        output = self.model(inputs, hidden)
        logits = output.logits.view(-1, self.model.ntoken)  # (T * B, V)
        raw_loss = F.cross_entropy(logits, targets.reshape(-1))
        loss = raw_loss
        if trainer.alpha:
            loss = loss + activation_regularization(output.last_dropped, trainer.alpha)
        if trainer.beta:
            loss = loss + temporal_activation_regularization(output.last_raw, trainer.beta)

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if trainer.clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), trainer.clip)
        self.optimizer.step()
        group["lr"] = base_lr
        self.averaging.update(self.model)
        return output.hidden, raw_loss

    # -- the whole run -------------------------------------------------------

    def fit(self) -> dict[str, float]:
        """Train for ``trainer.epochs``, then test the best checkpoint; return the final metrics."""
        config = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = MetricsWriter(self.run_dir)
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info(
            "model: %d parameters, vocabulary %d, device %s, embed_dropout=%s",
            n_params,
            len(self.vocab),
            self.device,
            config.embed_dropout.strategy,
        )
        try:
            for self.epoch in range(1, config.trainer.epochs + 1):
                self.run_epoch()
            return self.finish()
        finally:
            self.writer.close()

    def run_epoch(self) -> None:
        config = self.config
        result = self.train_epoch()
        eval_model = self.averaging.eval_model(self.model)
        val_loss, _ = evaluate(eval_model, self.val_data, config.trainer.bptt, config.trainer.limit_val_batches)

        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss = val_loss
            self.save_checkpoint(self.run_dir / BEST_CHECKPOINT, val_loss)

        averaging_was_active = self.averaging.active
        if config.optim.name == "ntasgd" and self.averaging.observe(val_loss):
            log.info("validation loss did not improve over the last %d epochs: averaging from now on", config.optim.nonmono)
            self.averaging.start(self.model)
        self.scheduler.step()

        lr = self.optimizer.param_groups[0]["lr"]
        self.writer.scalars(
            {
                "train/loss": result.loss,
                "train/ppl": perplexity(result.loss),
                "val/loss": val_loss,
                "val/ppl": perplexity(val_loss),
                "optim/lr": lr,
                "optim/averaging": float(averaging_was_active),
                "throughput/tokens_per_s": result.tokens / result.seconds,
            },
            self.epoch,
        )
        log.info(
            "epoch %d | %.1f s | %.0f tok/s | train loss %.3f ppl %.2f | val loss %.3f ppl %.2f%s | lr %.3g | averaging %s",
            self.epoch,
            result.seconds,
            result.tokens / result.seconds,
            result.loss,
            perplexity(result.loss),
            val_loss,
            perplexity(val_loss),
            " (best)" if improved else "",
            lr,
            "on" if averaging_was_active else "off",
        )

    def finish(self) -> dict[str, float]:
        """Evaluate the best checkpoint on the test split and log the final metrics."""
        config = self.config
        checkpoint = torch.load(self.run_dir / BEST_CHECKPOINT, map_location=self.device, weights_only=True)
        self.model.load_state_dict(checkpoint["eval_model"])
        test_loss, test_tokens = evaluate(
            self.model, self.test_data, config.trainer.bptt, config.trainer.limit_test_batches
        )
        metrics = {
            "best/val_loss": self.best_val_loss,
            "best/val_ppl": perplexity(self.best_val_loss),
            "test/loss": test_loss,
            "test/ppl": perplexity(test_loss),
        }
        self.writer.scalars({"test/loss": test_loss, "test/ppl": perplexity(test_loss)}, self.epoch)
        self.writer.hparams(flatten(config), metrics)
        log.info(
            "test loss %.3f ppl %.2f on %d tokens (best checkpoint, epoch %d, validation ppl %.2f)",
            test_loss,
            perplexity(test_loss),
            test_tokens,
            checkpoint["epoch"],
            perplexity(self.best_val_loss),
        )
        return metrics

    def save_checkpoint(self, path: Path, val_loss: float) -> None:
        """Write the state dicts, config, vocabulary, epoch and RNG states atomically.

        ``eval_model`` holds the weights that were validated: the running
        average once NT-ASGD has switched, else the raw weights in ``model``.
        """
        averaged = self.averaging.averaged
        state = {
            "model": self.model.state_dict(),
            "eval_model": self.averaging.eval_model(self.model).state_dict(),
            "averaged": None if averaged is None else averaged.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "config": OmegaConf.to_container(OmegaConf.structured(self.config)),
            "vocab": self.vocab.itos,
            "epoch": self.epoch,
            "val_loss": val_loss,
            "val_history": list(self.averaging.history),
            "rng": {
                "torch": torch.get_rng_state(),
                "bptt": self.sampler.generator.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }
        save_atomic(state, path)
