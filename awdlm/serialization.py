"""Atomic file writes for caches and checkpoints."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def save_atomic(obj: object, path: Path) -> None:
    """Write ``obj`` with torch.save to a temporary file, then rename it into place.

    A reader never sees a half-written file at ``path``, and two writers racing
    for the same path leave one complete file. A failed write removes its
    temporary file and leaves any earlier file at ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
