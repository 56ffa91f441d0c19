"""Open a finished or interrupted run: its checkpoint, config, corpus and model.

The entry points that start from a run (resume, finetune, evaluate,
generate and the Python API) all go through these helpers, so they read
checkpoints and report mismatches the same way.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from awdlm.config import Config, ConfigError, to_config
from awdlm.data import Corpus, Vocabulary
from awdlm.data.download import DownloadError
from awdlm.data.tokenize import CorpusFormatError
from awdlm.model.awd_lstm import AWDLSTM
from awdlm.training.checkpoint import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    CheckpointError,
    NonFiniteError,
    find_checkpoint,
    load_checkpoint,
)
from awdlm.training.trainer import TrainingInterrupted, build_model

# Errors whose message already names the bad value and the fix, so the
# command prints the message alone, without a traceback.
USER_ERRORS = (ConfigError, CheckpointError, CorpusFormatError, DownloadError, FileNotFoundError, NonFiniteError)

log = logging.getLogger(__name__)

# Overrides that change where data lives or how progress is shown, never the numbers a run produces.
LOCATION_KEYS = (
    "data_dir",
    "cache_dir",
    "dataset.path",
    "dataset.download",
    "dataset.sources",
    "trainer.device",
    "trainer.log_interval",
)


def check_new_run_dir(run_dir: Path) -> None:
    """Raise ConfigError when ``run_dir`` already contains a run's checkpoints, so they are never overwritten."""
    existing = [name for name in (LAST_CHECKPOINT, BEST_CHECKPOINT) if (run_dir / name).exists()]
    if existing:
        raise ConfigError(
            f"run directory {run_dir} already contains a run ({', '.join(existing)}): continue that run with "
            f"python -m awdlm.train resume={run_dir}, or choose another folder with hydra.run.dir=..."
        )


def save_hydra_record(cfg: DictConfig, run_dir: Path) -> None:
    """Write the composed config, Hydra's config and the command-line overrides into ``run_dir/.hydra``.

    Hydra writes these files itself before the command starts, unless
    ``hydra.output_subdir`` is null as in ``awdlm/conf``. Writing them after
    :func:`check_new_run_dir` leaves the record of an existing run as it was
    when a command is rejected.
    """
    from hydra.core.hydra_config import HydraConfig

    hydra_config = HydraConfig.get()
    folder = run_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_config}), folder / "hydra.yaml")
    OmegaConf.save(hydra_config.overrides.task, folder / "overrides.yaml")


def checkpoint_config(state: dict[str, Any]) -> Config:
    """Rebuild and validate the Config stored in a checkpoint."""
    return to_config(OmegaConf.create(state["config"]))


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """Return ``config`` with dotted keys replaced (``{"trainer.epochs": 3}``), validated again.

    A stored config has ``dataset.path`` resolved, so a new ``data_dir`` also
    moves a ``dataset.path`` that lay inside the old one.
    """
    overrides = dict(overrides)
    if "data_dir" in overrides and "dataset.path" not in overrides:
        old_path = Path(config.dataset.path)
        if old_path.is_relative_to(config.data_dir):
            overrides["dataset.path"] = str(Path(overrides["data_dir"]) / old_path.relative_to(config.data_dir))
    merged = OmegaConf.structured(config)
    for key, value in overrides.items():
        OmegaConf.update(merged, key, value, merge=False)
    return to_config(merged)


def command_line_overrides(cfg: DictConfig, skip: tuple[str, ...]) -> dict[str, Any]:
    """Return the keys set on the command line with their composed values, leaving out ``skip``.

    A group choice such as ``dataset=wikitext2`` returns the whole composed
    ``dataset`` node.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))
    overrides: dict[str, Any] = {}
    for override in parsed:
        key = override.key_or_group
        if key in skip or key.startswith("hydra."):
            continue
        value = OmegaConf.select(cfg, key)
        overrides[key] = OmegaConf.to_container(value) if isinstance(value, DictConfig) else value
    return overrides


def check_vocabulary(corpus: Corpus, state: dict[str, Any], checkpoint: Path) -> None:
    """Raise CheckpointError when the corpus was tokenized into another vocabulary than the checkpoint's."""
    if corpus.vocab.itos != list(state["vocab"]):
        raise CheckpointError(
            f"the corpus has a vocabulary of {len(corpus.vocab)} words that differs from the "
            f"{len(state['vocab'])} words of {checkpoint}; point data_dir=... or dataset.path=... "
            f"at the corpus the model was trained on"
        )


def load_model(state: dict[str, Any], config: Config, device: torch.device) -> AWDLSTM:
    """Build the model of ``config`` with the checkpoint's evaluated weights, in eval mode."""
    model = build_model(config, len(state["vocab"])).to(device)
    model.load_state_dict(state["eval_model"])
    return model.eval()


def open_checkpoint(location: Path, name: str = BEST_CHECKPOINT, device: str = "cpu") -> tuple[Path, dict[str, Any]]:
    """Find and load a checkpoint: ``location`` is a checkpoint file or a run directory holding ``name``."""
    path = find_checkpoint(Path(location), name)
    return path, load_checkpoint(path, device)


@contextmanager
def training_session() -> Iterator[None]:
    """Route log records around the progress bar and turn stops into exit statuses.

    A signal exits with 128 + its number. An error in :data:`USER_ERRORS`
    exits with status 1 and its message on stderr, without a traceback.
    """
    try:
        with logging_redirect_tqdm():
            yield
    except TrainingInterrupted as stop:
        log.warning("%s", stop)
        sys.exit(128 + stop.signum)
    except USER_ERRORS as error:
        sys.exit(f"error: {error}")


def vocabulary(state: dict[str, Any]) -> Vocabulary:
    return Vocabulary(list(state["vocab"]))
