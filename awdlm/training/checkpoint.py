"""Checkpoint files: names, the finiteness check before writing, and loading.

A checkpoint is a dict of state dicts, plain values and tensors, so it loads
with ``torch.load(weights_only=True)``. ``last.pt`` is the resume point and
``best.pt`` contains the weights with the lowest validation loss so far.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from awdlm.serialization import save_atomic

BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"
# Bump when the layout of the checkpoint dict changes.
CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not fit the requested run."""


class NonFiniteError(RuntimeError):
    """A loss, gradient or weight is NaN or infinite."""


def floating_tensors(value: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """Yield ``(key path, tensor)`` for every floating-point tensor nested in dicts, lists and tuples."""
    if isinstance(value, Tensor):
        if value.is_floating_point():
            yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from floating_tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from floating_tensors(item, f"{prefix}[{index}]")


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` atomically; raise NonFiniteError, writing nothing, if any tensor is not finite."""
    for key, tensor in floating_tensors(state):
        if not torch.isfinite(tensor).all():
            raise NonFiniteError(f"refusing to write {path}: {key} contains NaN or infinite values")
    save_atomic({"format": CHECKPOINT_FORMAT, **state}, path)


def find_checkpoint(location: Path, name: str) -> Path:
    """Return ``location`` itself when it is a file, else the checkpoint ``name`` inside that run directory."""
    location = Path(location)
    if location.is_file():
        return location
    if not location.is_dir():
        raise CheckpointError(f"run directory or checkpoint not found: {location}")
    path = location / name
    if not path.is_file():
        present = sorted(p.name for p in location.glob("*.pt")) or ["none"]
        raise CheckpointError(
            f"no {name} in {location} (checkpoints there: {', '.join(present)}); "
            f"pass a run directory that holds {name}, or the path of a checkpoint file"
        )
    return path


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # truncated, foreign or pickled-object files all land here
        raise CheckpointError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not an awdlm checkpoint of format {CHECKPOINT_FORMAT} (found format {found!r})"
        )
    return state
