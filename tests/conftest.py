"""Shared fixtures: the folder with the real Penn Treebank and WikiText-2 corpora."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_ENV = "AWDLM_DATA_DIR"
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Return $AWDLM_DATA_DIR, or the repository's data/ folder when it is unset.

    Tests that need the corpora fail, rather than skip, when they are missing.
    """
    path = Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)
    for required in ("ptb/ptb.train.txt", "wikitext-2/wiki.train.tokens"):
        if not (path / required).is_file():
            pytest.fail(
                f"corpus file {path / required} not found: set {DATA_ENV} to the folder that "
                f"holds ptb/ and wikitext-2/, or download them into {DEFAULT_DATA_DIR}"
            )
    return path
