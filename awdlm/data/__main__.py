"""Download, import, inspect and uncache the corpora.

Examples::

    python -m awdlm.data download ptb                 # into data/ptb
    python -m awdlm.data download all --data-dir /srv/corpora
    python -m awdlm.data download wikitext2 --source file:///mnt/mirror/wikitext-2-v1.zip
    python -m awdlm.data import ptb ~/Downloads/simple-examples.tgz
    python -m awdlm.data info
    python -m awdlm.data clear-cache

``--data-dir`` has the meaning of the trainer's ``data_dir``: each corpus goes
into the folder its ``awdlm/conf/dataset/*.yaml`` names under it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from awdlm.data.corpus import clear_cache
from awdlm.data.download import (
    WORK_PREFIX,
    DownloadError,
    check_files,
    download_dataset,
    import_dataset,
    known_datasets,
    load_dataset_config,
)
from awdlm.data.sources import PINNED

log = logging.getLogger("awdlm.data")

DEFAULT_DATA_DIR = "data"
DEFAULT_CACHE_DIR = "~/.cache/awdlm"


def _add_common_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    # Sub-commands repeat the options with SUPPRESS so that a value given
    # before the sub-command is not reset by the sub-parser's default.
    parser.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR if defaults else argparse.SUPPRESS,
        help="folder that contains one folder per corpus, as the trainer's data_dir (default: data)",
    )
    parser.add_argument(
        "--cache-dir",
        default=DEFAULT_CACHE_DIR if defaults else argparse.SUPPRESS,
        help="tokenized-corpus cache folder, as the trainer's cache_dir (default: ~/.cache/awdlm)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m awdlm.data", description="Manage awdlm's corpora.")
    _add_common_options(parser, defaults=True)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)
    names = known_datasets()

    download = commands.add_parser("download", help="fetch and verify a corpus from its public sources")
    download.add_argument("dataset", choices=[*names, "all"], help="the corpus to fetch, or all of them")
    download.add_argument(
        "--source",
        action="append",
        default=[],
        help="archive or folder URL, or local path, tried before the configured sources (repeatable)",
    )
    download.add_argument("--force", action="store_true", help="replace present files whose checksum differs")
    _add_common_options(download, defaults=False)

    importer = commands.add_parser("import", help="install a corpus from an archive or folder you already have")
    importer.add_argument("dataset", choices=names, help="the corpus that PATH contains")
    importer.add_argument("path", type=Path, help="archive (.tgz, .tar.gz, .tar, .zip) or folder")
    importer.add_argument("--force", action="store_true", help="replace present files whose checksum differs")
    _add_common_options(importer, defaults=False)

    info = commands.add_parser("info", help="list the known corpora, where they go and whether they are verified")
    _add_common_options(info, defaults=False)

    clear = commands.add_parser("clear-cache", help="delete the tokenized-corpus cache")
    _add_common_options(clear, defaults=False)
    return parser


def _dataset_folder(name: str, data_dir: str) -> Path:
    return Path(load_dataset_config(name, data_dir).path).expanduser().absolute()


def command_download(args: argparse.Namespace) -> int:
    names = known_datasets() if args.dataset == "all" else [args.dataset]
    data_dir = Path(args.data_dir).expanduser().absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    # ptb and ptb_char come from the same archive: keep archives until every dataset is done.
    with tempfile.TemporaryDirectory(prefix=f"{WORK_PREFIX}archives-{os.getpid()}-", dir=data_dir) as archive_dir:
        for name in names:
            config = load_dataset_config(name, args.data_dir)
            sources = [*args.source, *config.sources]
            folder = _dataset_folder(name, args.data_dir)
            download_dataset(name, folder, sources, force=args.force, archive_dir=Path(archive_dir))
    return 0


def command_import(args: argparse.Namespace) -> int:
    import_dataset(args.dataset, args.path, _dataset_folder(args.dataset, args.data_dir), force=args.force)
    return 0


def command_info(args: argparse.Namespace) -> int:
    rows = [("dataset", "file", "status", "folder")]
    for name in known_datasets():
        folder = _dataset_folder(name, args.data_dir)
        for file_name, state in check_files(folder, PINNED[name]).items():
            rows.append((name, file_name, state, str(folder)))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    print(f"cache: {Path(args.cache_dir).expanduser()}")
    return 0


def command_clear_cache(args: argparse.Namespace) -> int:
    removed = clear_cache(Path(args.cache_dir).expanduser())
    print(f"removed {len(removed)} cached corpus files from {Path(args.cache_dir).expanduser()}")
    return 0


COMMANDS = {
    "download": command_download,
    "import": command_import,
    "info": command_info,
    "clear-cache": command_clear_cache,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (DownloadError, FileNotFoundError, ValueError) as error:
        log.error("%s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
