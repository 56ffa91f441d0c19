"""Shared fixtures: the reference corpora and a tiny composed config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_ENV = "AWDLM_DATA_DIR"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder with the real ptb/ and wikitext-2/ corpora, from $AWDLM_DATA_DIR.

    Tests that need it fail, rather than skip, when it is missing.
    """
    value = os.environ.get(DATA_ENV)
    if not value:
        pytest.fail(f"{DATA_ENV} is not set: point it at the folder that holds ptb/ and wikitext-2/")
    path = Path(value)
    for required in ("ptb/ptb.train.txt", "wikitext-2/wiki.train.tokens"):
        if not (path / required).is_file():
            pytest.fail(f"{DATA_ENV}={value} has no {required}")
    return path
