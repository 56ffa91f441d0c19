"""Fetch, verify and install the standard corpora.

A source is one of:

- the URL of an archive (``.tgz``, ``.tar.gz``, ``.tar``, ``.zip``): it is
  downloaded whole and each needed file is taken from it by its base name,
  wherever it lies inside;
- the URL of a folder, ending in ``/``: each file is fetched as URL + name;
- a local path to an archive or a folder, or a ``file://`` URL. Files in a
  local folder are found by name, also in its subfolders.

Sources are tried in order. Everything is written into a work folder next to
the dataset folder, and each file is moved into the dataset folder only after
its SHA-256 matches the pinned value in :mod:`awdlm.data.sources`. A failed,
corrupted or interrupted download therefore leaves no file at a path the
loader reads. Work folders of processes that no longer run are deleted at the
start of the next download.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from omegaconf import OmegaConf
from tqdm import tqdm

from awdlm import __version__
from awdlm.config import DatasetConfig
from awdlm.data.sources import PINNED, PinnedDataset

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".zip")
WORK_PREFIX = ".awdlm-download-"
CHUNK_BYTES = 1 << 16
CONF_DIR = Path(__file__).resolve().parent.parent / "conf" / "dataset"

VERIFIED = "verified"
UNVERIFIED = "present, no pinned checksum"
MISSING = "missing"
MISMATCH = "checksum mismatch"


class DownloadError(RuntimeError):
    """No source delivered a verified copy of a corpus."""


class SourceError(Exception):
    """One source failed; ``retryable`` marks failures that a second attempt may fix."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def known_datasets() -> list[str]:
    return list(PINNED)


def load_dataset_config(name: str, data_dir: Path | str) -> DatasetConfig:
    """Read ``awdlm/conf/dataset/<name>.yaml`` with ``${data_dir}`` set to ``data_dir``."""
    path = CONF_DIR / f"{name}.yaml"
    if not path.is_file():
        choices = ", ".join(sorted(p.stem for p in CONF_DIR.glob("*.yaml")))
        raise ValueError(f"unknown dataset {name!r}: expected one of {choices}")
    dataset = OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(path))
    root = OmegaConf.create({"data_dir": str(data_dir), "dataset": dataset})
    config = OmegaConf.to_object(root.dataset)
    assert isinstance(config, DatasetConfig)
    return config


def sha256_of(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _check_unpinned(path: Path) -> str | None:
    """Return why a file without a pinned digest is unusable, or None."""
    data = path.read_bytes()
    if not data:
        return "it is empty"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"it is not UTF-8 text (byte offset {error.start})"
    return None


def check_files(folder: Path, pinned: PinnedDataset) -> dict[str, str]:
    """Map each file of a pinned dataset to VERIFIED, UNVERIFIED, MISSING or MISMATCH."""
    status = {}
    for name, expected in pinned.sha256.items():
        path = Path(folder) / name
        if not path.is_file():
            status[name] = MISSING
        elif expected is None:
            status[name] = UNVERIFIED if _check_unpinned(path) is None else MISMATCH
        else:
            status[name] = VERIFIED if sha256_of(path) == expected else MISMATCH
    return status


# Fetching -------------------------------------------------------------------


def _is_url(source: str) -> bool:
    return "://" in source


def _is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _copy_with_progress(stream: BinaryIO, destination: Path, total: int | None, label: str) -> None:
    """Copy ``stream`` to ``destination`` with a byte progress bar; a short stream raises SourceError."""
    written = 0
    with open(destination, "wb") as out, tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=None, leave=False
    ) as bar:
        while chunk := stream.read(CHUNK_BYTES):
            out.write(chunk)
            written += len(chunk)
            bar.update(len(chunk))
    if total is not None and written != total:
        raise SourceError(f"connection closed after {written} of {total} bytes", retryable=True)


def fetch_url(url: str, destination: Path, timeout: float) -> None:
    """Download ``url`` into ``destination``; network failures raise SourceError."""
    request = urllib.request.Request(url, headers={"User-Agent": f"awdlm/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            _copy_with_progress(response, destination, total, PurePosixPath(urllib.parse.urlsplit(url).path).name)
    except urllib.error.HTTPError as error:
        raise SourceError(f"HTTP {error.code} {error.reason}", retryable=error.code >= 500) from None
    except urllib.error.URLError as error:
        raise SourceError(f"connection failed: {error.reason}", retryable=True) from None
    except (http.client.HTTPException, OSError) as error:
        raise SourceError(f"transfer failed: {type(error).__name__}: {error}", retryable=True) from None


def _archive_members(archive: Path, names: set[str]) -> Iterable[tuple[str, BinaryIO]]:
    """Yield (base name, open member) for the archive's regular files named in ``names``."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zip_file:
            for info in zip_file.infolist():
                base = PurePosixPath(info.filename).name
                if not info.is_dir() and base in names:
                    with zip_file.open(info) as member:
                        yield base, member
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:
                base = PurePosixPath(info.name).name
                if info.isfile() and base in names:
                    member = tar.extractfile(info)
                    assert member is not None
                    with member:
                        yield base, member
            # Tar has no checksum over file data, but gzip, bzip2 and xz check theirs
            # at the end of the stream, which iterating the members may not reach.
            while tar.fileobj.read(CHUNK_BYTES):
                pass
    else:
        raise SourceError("it is neither a zip nor a tar archive")


def extract(archive: Path, names: set[str], destination: Path) -> dict[str, Path]:
    """Copy the files named in ``names`` out of ``archive``, matched by base name.

    Only the base name of a member is used for the output path, so member
    paths with ``..`` or absolute paths cannot write outside ``destination``.
    """
    found: dict[str, Path] = {}
    try:
        for base, member in _archive_members(archive, names):
            if base in found:
                raise SourceError(f"the archive has more than one file named {base}")
            found[base] = destination / base
            with open(found[base], "wb") as out:
                shutil.copyfileobj(member, out, CHUNK_BYTES)
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise SourceError(f"the archive is damaged: {type(error).__name__}: {error}") from None
    return found


def _find_in_folder(folder: Path, name: str) -> Path | None:
    direct = folder / name
    if direct.is_file():
        return direct
    matches = sorted(path for path in folder.rglob(name) if path.is_file())
    if len(matches) > 1:
        listed = ", ".join(str(path) for path in matches)
        raise SourceError(f"more than one file named {name} under {folder}: {listed}")
    return matches[0] if matches else None


def _fetch_archive(url: str, work: Path, archive_dir: Path | None, timeout: float) -> Path:
    """Download an archive into ``work``, or into ``archive_dir`` where later datasets can reuse it."""
    if archive_dir is None:
        archive = work / "archive"
        fetch_url(url, archive, timeout)
        return archive
    archive = archive_dir / hashlib.sha256(url.encode()).hexdigest()[:20]
    if archive.is_file():
        log.info("reusing %s, fetched earlier by this command", url)
        return archive
    partial = work / "archive"
    fetch_url(url, partial, timeout)
    os.replace(partial, archive)
    return archive


def fetch_source(
    source: str,
    names: set[str],
    optional: set[str],
    work: Path,
    timeout: float,
    archive_dir: Path | None = None,
) -> dict[str, Path]:
    """Place the files ``names`` (and any of ``optional``) from one source into ``work``.

    Raises SourceError when the source fails or lacks one of ``names``.
    Downloaded archives are kept in ``archive_dir`` when it is given.
    """
    files_dir = work / "files"
    files_dir.mkdir()
    local = None if _is_url(source) else Path(source).expanduser()

    if local is not None and local.is_dir():
        found = {}
        for name in sorted(names | optional):
            path = _find_in_folder(local, name)
            if path is not None:
                found[name] = files_dir / name
                shutil.copyfile(path, found[name])
    elif local is not None and local.is_file():
        found = extract(local, names | optional, files_dir)
    elif local is not None:
        raise SourceError("no such file or folder")
    elif _is_archive_name(urllib.parse.urlsplit(source).path):
        archive = _fetch_archive(source, work, archive_dir, timeout)
        try:
            found = extract(archive, names | optional, files_dir)
        except SourceError:
            archive.unlink(missing_ok=True)  # a damaged archive must be fetched again, not reused
            raise
    elif source.endswith("/"):
        found = {}
        for name in sorted(names):
            found[name] = files_dir / name
            fetch_url(source + name, found[name], timeout)
    else:
        raise SourceError(
            f"a URL source must name an archive ({', '.join(ARCHIVE_SUFFIXES)}) or a folder ending in /"
        )

    missing = sorted(names - set(found))
    if missing:
        raise SourceError(f"{', '.join(missing)} not found in this source")
    return found


def verify(found: dict[str, Path], pinned: PinnedDataset, source: str) -> None:
    """Raise SourceError unless every fetched file matches its pinned digest."""
    expected_digests: dict[str, str | None] = {**pinned.witnesses, **pinned.sha256}
    for name, path in sorted(found.items()):
        expected = expected_digests[name]
        if expected is None:
            problem = _check_unpinned(path)
            if problem is not None:
                raise SourceError(f"{name} from {source} is unusable: {problem}")
            log.warning("%s from %s has no pinned checksum; only checked that it is non-empty UTF-8", name, source)
            continue
        actual = sha256_of(path)
        if actual != expected:
            log.error("checksum mismatch: %s from %s has SHA-256 %s, expected %s", name, source, actual, expected)
            raise SourceError(f"checksum mismatch: {name} has SHA-256 {actual}, expected {expected}")


# Work folders ---------------------------------------------------------------


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_work_dirs(parent: Path) -> None:
    """Delete work folders under ``parent`` whose process is no longer running.

    NOTE: process ids are checked on this machine only. Two machines that
    download into one shared folder at once may delete each other's work.
    """
    if not parent.is_dir():
        return
    for path in parent.glob(f"{WORK_PREFIX}*"):
        try:
            pid = int(path.name[len(WORK_PREFIX) :].split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _process_alive(pid):
            log.info("removing %s, left by an interrupted download (process %d)", path, pid)
            shutil.rmtree(path, ignore_errors=True)


# Installing -----------------------------------------------------------------


def _install_from(
    source: str, name: str, folder: Path, needed: list[str], timeout: float, archive_dir: Path | None
) -> None:
    pinned = PINNED[name]
    work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{name}-{os.getpid()}-", dir=folder.parent))
    try:
        optional = set(pinned.witnesses) if not _is_url(source) or not source.endswith("/") else set()
        found = fetch_source(source, set(needed), optional - set(needed), work, timeout, archive_dir)
        verify(found, pinned, source)
        folder.mkdir(parents=True, exist_ok=True)
        for file_name in needed:
            os.replace(found[file_name], folder / file_name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def download_dataset(
    name: str,
    folder: Path,
    sources: Iterable[str],
    *,
    force: bool = False,
    attempts: int = 2,
    timeout: float = 60.0,
    archive_dir: Path | None = None,
) -> bool:
    """Make ``folder`` hold verified copies of dataset ``name``'s files.

    Files already present and verified are kept, and when all are, nothing is
    fetched and False is returned. Otherwise the sources are tried in order,
    each up to ``attempts`` times for network failures, and True is returned
    once one delivered. A present file whose checksum differs raises
    DownloadError unless ``force`` is set, in which case it is replaced.
    Archives fetched into ``archive_dir`` are reused by later calls with the
    same folder, so PTB and PTB at character level share one download.
    """
    if name not in PINNED:
        raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(PINNED)}")
    folder = Path(folder).expanduser().absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_work_dirs(folder.parent)

    status = check_files(folder, PINNED[name])
    mismatched = [file_name for file_name, state in status.items() if state == MISMATCH]
    if mismatched and not force:
        listed = ", ".join(str(folder / file_name) for file_name in mismatched)
        raise DownloadError(
            f"{listed} does not match the published {name} release; delete it or rerun with --force to replace it"
        )
    needed = [file_name for file_name, state in status.items() if state in (MISSING, MISMATCH)]
    if not needed:
        log.info("%s is already present in %s", name, folder)
        return False

    sources = list(sources)
    failures = []
    for source in sources:
        for attempt in range(1, attempts + 1):
            log.info("fetching %s from %s (attempt %d of %d)", name, source, attempt, attempts)
            try:
                _install_from(source, name, folder, needed, timeout, archive_dir)
            except SourceError as error:
                log.warning("%s: %s", source, error)
                failures.append(f"{source} (attempt {attempt}): {error}")
                if not error.retryable:
                    break
            else:
                log.info("installed verified %s files into %s", name, folder)
                return True

    tried = "\n".join(f"  - {failure}" for failure in failures) or "  (dataset.sources is empty)"
    raise DownloadError(
        f"could not download {name} into {folder}; tried:\n{tried}\n"
        f"If the corpus is already on this machine, point data_dir=DIR (python -m awdlm.data: --data-dir) "
        f"at the folder that holds it. Otherwise put a reachable mirror first in dataset.sources "
        f"(python -m awdlm.data: --source), or fetch the archive by other means and run: "
        f"python -m awdlm.data import {name} PATH"
    )


def import_dataset(name: str, path: Path, folder: Path, *, force: bool = False) -> bool:
    """Install dataset ``name`` from a local archive or folder, with the same checks as a download."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: expected an archive (.tgz, .tar.gz, .tar, .zip) or a folder")
    return download_dataset(name, folder, [str(path.absolute())], force=force, attempts=1)


def ensure_dataset(dataset: DatasetConfig, folder: Path) -> None:
    """Download a known dataset whose split files are missing, as ``dataset.download`` allows.

    Datasets without pinned checksums, or whose split names differ from the
    published ones, are left to the loader, which reports missing files.
    """
    folder = Path(folder)
    split_names = [dataset.train, dataset.valid, dataset.test]
    missing = [file_name for file_name in split_names if not (folder / file_name).is_file()]
    pinned = PINNED.get(dataset.name)
    if not missing or pinned is None or not set(split_names) <= set(pinned.sha256):
        return
    if not dataset.download:
        raise FileNotFoundError(
            f"{folder / missing[0]} not found and dataset.download=false; run "
            f"python -m awdlm.data download {dataset.name} --data-dir DIR, or set dataset.download=true"
        )
    log.info("%s is missing from %s; downloading it", dataset.name, folder)
    download_dataset(dataset.name, folder, dataset.sources)
