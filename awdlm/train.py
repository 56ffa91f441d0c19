"""Train an AWD-LSTM language model.

Examples::

    python -m awdlm.train                                  # PTB, paper hyper-parameters
    python -m awdlm.train embed_dropout=gather             # same run, gather-mask embedding dropout
    python -m awdlm.train -m embed_dropout=dense,gather    # both, as a Hydra multirun
    python -m awdlm.train experiment=wt2_paper             # WikiText-2 recipe
    python -m awdlm.train experiment=ptb_cpu data_dir=/path/to/corpora
    python -m awdlm.train dataset=text dataset.path=/path/to/folder   # train.txt, valid.txt, test.txt
    python -m awdlm.train trainer.epochs=1 trainer.limit_train_batches=20 trainer.limit_val_batches=5
    python -m awdlm.train resume=outputs/2026-01-31/12-00-00_defaults   # continue an interrupted run
    python -m awdlm.train resume=outputs/... trainer.device=cuda:1      # ... on another device

Each run writes its log, TensorBoard events, resolved config (``config.yaml``),
best checkpoint (``best.pt``) and resume point (``last.pt``) into its Hydra
output directory under ``outputs/``. SIGINT or SIGTERM saves ``last.pt`` at the
next batch boundary and exits; ``resume=<run dir>`` continues from it with the
run's own config. Only the keys that do not change the numbers
(``data_dir``, ``cache_dir``, ``dataset.path``, ``dataset.download``,
``dataset.sources``, ``trainer.device``, ``trainer.log_interval``,
``trainer.checkpoint_every``, ``trainer.epochs``) may be overridden on resume.

Data-parallel training on N processes (``docs/distributed.md``)::

    torchrun --nproc_per_node=N -m awdlm.train hydra.run.dir=outputs/ddp trainer.batch_size=80
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch.distributed
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from awdlm.config import Config, ConfigError, flatten, to_config
from awdlm.data import Corpus, TokenizerSettings, load_corpus
from awdlm.data.corpus import check_split_lengths
from awdlm.data.download import ensure_dataset
from awdlm.runs import (
    LOCATION_KEYS,
    check_new_run_dir,
    check_vocabulary,
    checkpoint_config,
    command_line_overrides,
    save_hydra_record,
    training_session,
    with_overrides,
)
from awdlm.training.checkpoint import LAST_CHECKPOINT, CheckpointError, find_checkpoint, load_checkpoint
from awdlm.training.distributed import (
    ProcessGroup,
    destroy_process_group,
    init_process_group,
    local_batch_size,
)
from awdlm.training.trainer import RUN_CONFIG, Trainer

log = logging.getLogger("awdlm.train")

# The overrides a resumed run accepts: they move data or output, or extend the run.
RESUME_KEYS = LOCATION_KEYS + ("trainer.checkpoint_every", "trainer.epochs")

# Names a run's output folder after its overrides; "defaults" when there are none.
OmegaConf.register_new_resolver("run_name", lambda overrides: overrides or "defaults", replace=True)
# A resumed run logs into its own folder; a resume of a missing folder falls back to a new one.
OmegaConf.register_new_resolver(
    "resume_or", lambda resume, default: resume if resume and Path(resume).is_dir() else default, replace=True
)


def config_differences(left: Config, right: Config, ignore: tuple[str, ...] = ()) -> list[str]:
    """Return the dotted keys whose values differ between two configs, leaving out ``ignore``."""
    flat_left, flat_right = flatten(left), flatten(right)
    keys = sorted(set(flat_left) | set(flat_right))
    return [key for key in keys if key not in ignore and flat_left.get(key) != flat_right.get(key)]


def dataset_files(config: Config) -> dict[str, Path]:
    """Map each split to its file, downloading a known dataset first when its files are missing."""
    folder = Path(to_absolute_path(config.dataset.path))
    ensure_dataset(config.dataset, folder)
    return {split: folder / getattr(config.dataset, split) for split in ("train", "valid", "test")}


def load_dataset(config: Config, group: ProcessGroup | None = None) -> Corpus:
    """Load the corpus of ``config`` through the tokenized-corpus cache, downloading it first when needed.

    With several ranks, rank 0 downloads and caches first and the others
    then read its cache, so no two processes write the same files.
    """
    group = group or ProcessGroup()
    cache_dir = None if config.cache_dir is None else Path(config.cache_dir).expanduser()
    dataset = config.dataset
    settings = TokenizerSettings.for_level(
        dataset.level, dataset.tokenizer, min_count=dataset.min_count, max_size=dataset.max_size
    )
    if not group.is_main:
        group.barrier()
    corpus = load_corpus(dataset_files(config), cache_dir, name=dataset.name, settings=settings)
    if group.is_main:
        group.barrier()
    return corpus


def run(config: Config, run_dir: Path, group: ProcessGroup | None = None) -> dict[str, float]:
    """Load the corpus, train, test; return the final metrics."""
    group = group or ProcessGroup()
    local_batch_size(config.trainer.batch_size, group)  # fails before any download or training
    corpus = load_dataset(config, group)
    trainer = config.trainer
    batch_sizes = {
        "train": (trainer.batch_size, "trainer.batch_size"),
        "valid": (trainer.eval_batch_size, "trainer.eval_batch_size"),
        "test": (trainer.test_batch_size, "trainer.test_batch_size"),
    }
    check_split_lengths(corpus, batch_sizes, dataset_files(config))
    return Trainer(config, corpus, run_dir, group=group).fit()


def open_resume(run_dir: Path, overrides: dict[str, Any]) -> tuple[Path, dict[str, Any], Config]:
    """Check a resume request without writing anything; return the checkpoint path, its state and the config.

    Raises CheckpointError for a missing directory or checkpoint, or a
    checkpoint whose config differs from the run's ``config.yaml``, and
    ConfigError for an override outside RESUME_KEYS that changes a value.
    """
    if not run_dir.is_dir():
        raise CheckpointError(f"resume={run_dir}: run directory not found")
    path = find_checkpoint(run_dir, LAST_CHECKPOINT)
    state = load_checkpoint(path)
    saved = checkpoint_config(state)
    recorded = run_dir / RUN_CONFIG
    if recorded.is_file():
        differences = config_differences(saved, to_config(OmegaConf.load(recorded)), ignore=RESUME_KEYS)
        if differences:
            raise CheckpointError(
                f"{path} does not belong to this run: its config differs from {recorded} "
                f"in {', '.join(differences)}"
            )
    saved_values = OmegaConf.structured(saved)
    rejected = {
        key: value
        for key, value in overrides.items()
        if key not in RESUME_KEYS and value != OmegaConf.select(saved_values, key)
    }
    if rejected:
        changes = ", ".join(f"{key}={value!r}" for key, value in rejected.items())
        raise ConfigError(
            f"resume={run_dir} keeps the run's config, but the command line changes {changes}; "
            f"drop these overrides, or start a new run. Allowed on resume: {', '.join(RESUME_KEYS)}"
        )
    return path, state, with_overrides(saved, overrides)


def resume(run_dir: Path, overrides: dict[str, Any] | None = None, group: ProcessGroup | None = None) -> dict[str, float]:
    """Continue the run in ``run_dir`` from its ``last.pt``; return the final metrics.

    ``overrides`` maps dotted keys to values. Every check runs before anything
    is written, so a rejected resume leaves ``run_dir`` as it was. With several
    ranks every rank reads ``last.pt``.
    """
    group = group or ProcessGroup()
    run_dir = Path(run_dir)
    path, state, config = open_resume(run_dir, overrides or {})
    local_batch_size(config.trainer.batch_size, group)
    corpus = load_dataset(config, group)
    check_vocabulary(corpus, state, path)

    trainer = Trainer(config, corpus, run_dir, group=group)
    trainer.restore(state)
    handler = None
    if group.is_main:
        # The resumed run's log continues the run's own log file, which the
        # command line's Hydra logging already writes to.
        log_file = (run_dir / "train.log").resolve()
        if not any(
            isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve() == log_file
            for h in logging.getLogger().handlers
        ):
            handler = logging.FileHandler(log_file)
            handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
            logging.getLogger().addHandler(handler)
    log.info("resuming %s from %s", run_dir, path)
    try:
        return trainer.fit()
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()


def quiet_other_ranks(group: ProcessGroup) -> None:
    """Leave the log file and the console to rank 0: other ranks log only warnings and errors, to stderr."""
    if group.is_main:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.WARNING)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    resume_dir = cfg.get("resume")
    group = init_process_group(cfg.trainer.device)
    quiet_other_ranks(group)
    if group.enabled:
        log.info("data-parallel training on %d processes, backend %s", group.world_size, torch.distributed.get_backend())
    try:
        with training_session():
            if resume_dir is not None:
                overrides = command_line_overrides(cfg, skip=("resume",))
                metrics = resume(Path(to_absolute_path(resume_dir)), overrides, group)
            else:
                # NOTE: Hydra names the run directory on each rank before this line, so a
                # time-stamped name can differ between ranks; rank 0's directory is used.
                # Pass hydra.run.dir=... under torchrun to get a single directory.
                run_dir = Path(group.broadcast_object(HydraConfig.get().runtime.output_dir))
                check_new_run_dir(run_dir)
                if group.is_main:
                    save_hydra_record(cfg, run_dir)
                log.info("run directory %s", run_dir)
                metrics = run(to_config(cfg), run_dir, group)
    finally:
        destroy_process_group()
    return metrics["best/val_loss"]


if __name__ == "__main__":
    main()
