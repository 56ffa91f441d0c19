"""Finetune a trained model with averaged SGD, as the second stage of the AWD-LSTM recipe.

Examples::

    python -m awdlm.finetune run=outputs/2026-01-31/12-00-00_defaults
    python -m awdlm.finetune run=outputs/.../best.pt trainer.epochs=300
    python -m awdlm.finetune run=outputs/... hydra.run.dir=outputs/ptb-finetune
    python -m awdlm.train resume=outputs/ptb-finetune         # continue an interrupted finetuning run

Finetuning loads the weights of the run's ``best.pt`` (the averaged weights
once NT-ASGD had switched) and trains them with the run's own config and
regularizers, averaging from the first step. After every epoch it validates
the averaged weights and writes ``best.pt`` into its own run directory only
when they beat the best loss so far, starting from the pretrained weights'
loss. It stops when the non-monotone criterion fires on the averaged
validation losses (or after ``trainer.epochs``), then reports the test
perplexity. Its epochs are numbered on from the pretraining run's last one,
so both runs' TensorBoard curves line up.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from awdlm.config import ConfigError
from awdlm.evaluation.scoring import evaluate, perplexity
from awdlm.runs import (
    check_new_run_dir,
    check_vocabulary,
    checkpoint_config,
    command_line_overrides,
    open_checkpoint,
    save_hydra_record,
    training_session,
    with_overrides,
)
from awdlm.train import load_dataset
from awdlm.training.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, load_checkpoint
from awdlm.training.trainer import Trainer

log = logging.getLogger("awdlm.finetune")

# Settings that turn a training config into a finetuning one: averaged SGD from the first step, stop on a stall.
FINETUNE_SETTINGS = {"optim.name": "ntasgd", "optim.average_after": 0, "trainer.stop_when_stalled": True}


def finetune(location: Path, run_dir: Path, overrides: dict[str, Any] | None = None, checkpoint: str = BEST_CHECKPOINT) -> dict[str, float]:
    """Finetune the model of ``location`` (run directory or checkpoint) into ``run_dir``; return the final metrics."""
    path, state = open_checkpoint(Path(location), checkpoint)
    if Path(run_dir).resolve() == path.parent.resolve():
        raise ConfigError(
            f"finetuning would write into the pretraining run {path.parent}; "
            f"choose another output directory with hydra.run.dir=..."
        )
    pretrained = checkpoint_config(state)
    if pretrained.optim.name != "ntasgd" and "optim.lr" not in (overrides or {}):
        raise ConfigError(
            f"the run was trained with optim={pretrained.optim.name} at lr {pretrained.optim.lr}, "
            f"but finetuning uses averaged SGD; set its learning rate with optim.lr=..."
        )
    config = with_overrides(pretrained, {**(overrides or {}), **FINETUNE_SETTINGS})
    corpus = load_dataset(config)
    check_vocabulary(corpus, state, path)

    trainer = Trainer(config, corpus, run_dir, first_epoch=last_epoch(path, state) + 1)
    trainer.model.load_state_dict(state["eval_model"])
    trainer.start_checkpoint = path.resolve()
    start_loss, _ = evaluate(trainer.model, trainer.val_data, config.trainer.bptt, config.trainer.limit_val_batches)
    trainer.best_val_loss = start_loss
    log.info(
        "finetuning %s (epoch %d) into %s: starting validation loss %.3f ppl %.2f",
        path,
        state["epoch"],
        run_dir,
        start_loss,
        perplexity(start_loss),
    )
    return trainer.fit()


def last_epoch(path: Path, state: dict[str, Any]) -> int:
    """Return the last epoch the pretraining run finished, from its last.pt when it lies beside ``path``."""
    last = path.parent / LAST_CHECKPOINT
    if last.is_file() and last != path:
        last_state = load_checkpoint(last)
        return last_state["epoch"] - (last_state["progress"] is not None)
    return state["epoch"]


@hydra.main(version_base="1.3", config_path="conf", config_name="finetune")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    overrides = command_line_overrides(cfg, skip=("run", "checkpoint", "resume"))
    with training_session():
        check_new_run_dir(run_dir)
        save_hydra_record(cfg, run_dir)
        metrics = finetune(Path(to_absolute_path(cfg.run)), run_dir, overrides, cfg.checkpoint)
    return metrics["best/val_loss"]


if __name__ == "__main__":
    main()
