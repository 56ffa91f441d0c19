"""Downloads from a local HTTP server that serves archives built from the reference corpora.

The server binds 127.0.0.1 on a free port and serves in-memory bytes, so the
tests reach no other host. Archives copy the public layouts:
``simple-examples/data/`` inside ``simple-examples.tgz`` and ``wikitext-2/``
inside ``wikitext-2-v1.zip``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from awdlm.config import DatasetConfig
from awdlm.data.__main__ import main as data_cli
from awdlm.data.download import (
    MISMATCH,
    UNVERIFIED,
    VERIFIED,
    WORK_PREFIX,
    DownloadError,
    check_files,
    download_dataset,
    ensure_dataset,
    import_dataset,
)
from awdlm.data.sources import PINNED

PTB_FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
WIKI_FILES = ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")
CHAR_FILES = ("ptb.char.train.txt", "ptb.char.valid.txt", "ptb.char.test.txt")


def char_version(text: bytes) -> bytes:
    """Write a PTB text in the ptb.char layout: characters separated by spaces, "_" between words."""
    lines = [" ".join("_".join(line.split())) for line in text.decode().split("\n")]
    return "\n".join(lines).encode()


def make_tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def flip_byte(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


@dataclass
class Route:
    body: bytes
    drops_left: int = 0  # the next this many responses stop halfway and close the connection


@dataclass
class Server:
    url: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def serve(self, path: str, body: bytes, drops: int = 0) -> str:
        self.routes[path] = Route(body, drops)
        return self.url + path


@pytest.fixture(scope="session")
def corpora(data_dir: Path) -> dict[str, bytes]:
    files = {name: (data_dir / "ptb" / name).read_bytes() for name in PTB_FILES}
    files.update({name: (data_dir / "wikitext-2" / name).read_bytes() for name in WIKI_FILES})
    for word_name, char_name in zip(PTB_FILES, CHAR_FILES):
        files[char_name] = char_version(files[word_name])
    return files


@pytest.fixture(scope="session")
def archives(corpora: dict[str, bytes]) -> dict[str, bytes]:
    ptb_members = {f"simple-examples/data/{name}": corpora[name] for name in (*PTB_FILES, *CHAR_FILES)}
    ptb_members["simple-examples/data/README"] = b"Penn Treebank, Mikolov's preprocessing\n"
    corrupted = dict(ptb_members)
    corrupted["simple-examples/data/ptb.valid.txt"] = flip_byte(corpora["ptb.valid.txt"], 1000)
    wiki_members = {f"wikitext-2/{name}": corpora[name] for name in WIKI_FILES}
    return {
        "simple-examples.tgz": make_tgz(ptb_members),
        "corrupted-simple-examples.tgz": make_tgz(corrupted),
        "wikitext-2-v1.zip": make_zip(wiki_members),
    }


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
            state.requests.append(self.path)
            route = state.routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            if route.drops_left > 0:
                route.drops_left -= 1
                self.wfile.write(route.body[: len(route.body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(route.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def assert_installed(folder: Path, names: tuple[str, ...], corpora: dict[str, bytes]) -> None:
    assert sorted(path.name for path in folder.iterdir()) == sorted(names)
    for name in names:
        assert (folder / name).read_bytes() == corpora[name], name


def leftovers(parent: Path) -> list[str]:
    return sorted(path.name for path in parent.iterdir() if path.name.startswith(WORK_PREFIX))


def test_pinned_digests_match_reference(data_dir: Path) -> None:
    for name, expected in PINNED["ptb"].sha256.items():
        assert hashlib.sha256((data_dir / "ptb" / name).read_bytes()).hexdigest() == expected
    for name, expected in PINNED["wikitext2"].sha256.items():
        assert hashlib.sha256((data_dir / "wikitext-2" / name).read_bytes()).hexdigest() == expected


def test_ptb_download_from_tgz(server, archives, corpora, tmp_path) -> None:
    url = server.serve("/rnnlm/simple-examples.tgz", archives["simple-examples.tgz"])
    folder = tmp_path / "data" / "ptb"
    assert download_dataset("ptb", folder, [url]) is True
    assert_installed(folder, PTB_FILES, corpora)
    assert set(check_files(folder, PINNED["ptb"]).values()) == {VERIFIED}
    assert leftovers(tmp_path / "data") == []


def test_wikitext2_download_from_zip(server, archives, corpora, tmp_path) -> None:
    url = server.serve("/wikitext/wikitext-2-v1.zip", archives["wikitext-2-v1.zip"])
    folder = tmp_path / "data" / "wikitext-2"
    assert download_dataset("wikitext2", folder, [url]) is True
    assert_installed(folder, WIKI_FILES, corpora)
    assert leftovers(tmp_path / "data") == []


def test_ptb_download_from_plain_files(server, corpora, tmp_path) -> None:
    for name in PTB_FILES:
        server.serve(f"/lstm/data/{name}", corpora[name])
    folder = tmp_path / "ptb"
    assert download_dataset("ptb", folder, [server.url + "/lstm/data/"]) is True
    assert_installed(folder, PTB_FILES, corpora)
    assert sorted(server.requests) == sorted(f"/lstm/data/{name}" for name in PTB_FILES)


def test_second_call_fetches_nothing(server, archives, tmp_path) -> None:
    url = server.serve("/simple-examples.tgz", archives["simple-examples.tgz"])
    folder = tmp_path / "ptb"
    download_dataset("ptb", folder, [url])
    stamps = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    assert download_dataset("ptb", folder, [url]) is False
    assert server.requests == ["/simple-examples.tgz"]
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == stamps


def test_corrupted_byte_falls_back(server, archives, corpora, tmp_path, caplog) -> None:
    bad_url = server.serve("/mirror/simple-examples.tgz", archives["corrupted-simple-examples.tgz"])
    for name in PTB_FILES:
        server.serve(f"/plain/{name}", corpora[name])
    folder = tmp_path / "ptb"
    with caplog.at_level(logging.WARNING, logger="awdlm.data.download"):
        assert download_dataset("ptb", folder, [bad_url, server.url + "/plain/"]) is True
    assert_installed(folder, PTB_FILES, corpora)

    actual = hashlib.sha256(flip_byte(corpora["ptb.valid.txt"], 1000)).hexdigest()
    mismatch = [record.getMessage() for record in caplog.records if "checksum mismatch" in record.getMessage()]
    assert mismatch, caplog.text
    assert "ptb.valid.txt" in mismatch[0]
    assert bad_url in mismatch[0]
    assert actual in mismatch[0]
    assert PINNED["ptb"].sha256["ptb.valid.txt"] in mismatch[0]
    # A checksum mismatch is not retried: one request to the bad source, then the fallback.
    assert server.requests.count("/mirror/simple-examples.tgz") == 1


def test_corrupted_only_source_leaves_nothing(server, archives, tmp_path) -> None:
    url = server.serve("/simple-examples.tgz", archives["corrupted-simple-examples.tgz"])
    parent = tmp_path / "data"
    with pytest.raises(DownloadError) as info:
        download_dataset("ptb", parent / "ptb", [url])
    assert "checksum mismatch: ptb.valid.txt" in str(info.value)
    assert url in str(info.value)
    assert "python -m awdlm.data import ptb PATH" in str(info.value)
    assert not (parent / "ptb").exists()
    assert leftovers(parent) == []


def test_damaged_archive_falls_back(server, archives, corpora, tmp_path, caplog) -> None:
    data = archives["simple-examples.tgz"]
    bad_url = server.serve("/damaged.tgz", data[: len(data) // 4])
    good_url = server.serve("/simple-examples.tgz", data)
    folder = tmp_path / "ptb"
    with caplog.at_level(logging.WARNING, logger="awdlm.data.download"):
        assert download_dataset("ptb", folder, [bad_url, good_url]) is True
    assert "the archive is damaged" in caplog.text
    assert server.requests == ["/damaged.tgz", "/simple-examples.tgz"]
    assert_installed(folder, PTB_FILES, corpora)


def test_gzip_checksum_checked(server, archives, tmp_path) -> None:
    data = archives["simple-examples.tgz"]
    # The last 8 bytes of a gzip stream are the CRC-32 and length of the data.
    url = server.serve("/simple-examples.tgz", flip_byte(data, len(data) - 8))
    with pytest.raises(DownloadError, match="the archive is damaged"):
        download_dataset("ptb", tmp_path / "ptb", [url])
    assert not (tmp_path / "ptb").exists()


def test_dropped_connection_leaves_nothing(server, archives, corpora, tmp_path) -> None:
    url = server.serve("/simple-examples.tgz", archives["simple-examples.tgz"], drops=1)
    parent = tmp_path / "data"
    with pytest.raises(DownloadError) as info:
        download_dataset("ptb", parent / "ptb", [url], attempts=1)
    assert "connection closed after" in str(info.value)
    assert not (parent / "ptb").exists()
    assert leftovers(parent) == []

    assert download_dataset("ptb", parent / "ptb", [url], attempts=1) is True
    assert_installed(parent / "ptb", PTB_FILES, corpora)


def test_dropped_connection_retried_in_call(server, archives, corpora, tmp_path) -> None:
    url = server.serve("/wikitext-2-v1.zip", archives["wikitext-2-v1.zip"], drops=1)
    folder = tmp_path / "wikitext-2"
    assert download_dataset("wikitext2", folder, [url], attempts=2) is True
    assert server.requests == ["/wikitext-2-v1.zip", "/wikitext-2-v1.zip"]
    assert_installed(folder, WIKI_FILES, corpora)


def test_missing_url_tries_next(server, archives, corpora, tmp_path) -> None:
    good_url = server.serve("/wikitext-2-v1.zip", archives["wikitext-2-v1.zip"])
    folder = tmp_path / "wikitext-2"
    assert download_dataset("wikitext2", folder, [server.url + "/gone/wikitext-2-v1.zip", good_url]) is True
    assert server.requests == ["/gone/wikitext-2-v1.zip", "/wikitext-2-v1.zip"]
    assert_installed(folder, WIKI_FILES, corpora)


def test_stale_work_dir_removed(server, archives, tmp_path) -> None:
    parent = tmp_path / "data"
    stale = parent / f"{WORK_PREFIX}ptb-99999999-abc"  # above Linux's maximum process id
    (stale / "files").mkdir(parents=True)
    (stale / "files" / "ptb.train.txt").write_bytes(b"half a file")
    url = server.serve("/simple-examples.tgz", archives["simple-examples.tgz"])
    download_dataset("ptb", parent / "ptb", [url])
    assert leftovers(parent) == []


def test_mismatched_present_file_needs_force(server, archives, corpora, tmp_path) -> None:
    url = server.serve("/simple-examples.tgz", archives["simple-examples.tgz"])
    folder = tmp_path / "ptb"
    download_dataset("ptb", folder, [url])
    (folder / "ptb.test.txt").write_bytes(b"edited by hand\n")
    with pytest.raises(DownloadError) as info:
        download_dataset("ptb", folder, [url])
    assert str(folder / "ptb.test.txt") in str(info.value)
    assert "--force" in str(info.value)
    assert check_files(folder, PINNED["ptb"])["ptb.test.txt"] == MISMATCH

    assert download_dataset("ptb", folder, [url], force=True) is True
    assert_installed(folder, PTB_FILES, corpora)


def test_ptb_char_checks_witness_files(server, archives, corpora, tmp_path, caplog) -> None:
    bad_url = server.serve("/corrupted.tgz", archives["corrupted-simple-examples.tgz"])
    good_url = server.serve("/simple-examples.tgz", archives["simple-examples.tgz"])
    folder = tmp_path / "ptb_char"
    with caplog.at_level(logging.WARNING, logger="awdlm.data.download"):
        assert download_dataset("ptb_char", folder, [bad_url, good_url]) is True
    assert "checksum mismatch: ptb.valid.txt" in caplog.text
    assert "no pinned checksum" in caplog.text
    # Only the character files are installed; the word files served as witnesses.
    assert_installed(folder, CHAR_FILES, corpora)
    assert set(check_files(folder, PINNED["ptb_char"]).values()) == {UNVERIFIED}


def test_import_archive_and_folder(archives, corpora, tmp_path, capsys) -> None:
    archive = tmp_path / "downloads" / "wikitext-2-v1.zip"
    archive.parent.mkdir()
    archive.write_bytes(archives["wikitext-2-v1.zip"])
    data_dir = tmp_path / "data"
    assert data_cli(["import", "wikitext2", str(archive), "--data-dir", str(data_dir)]) == 0
    assert_installed(data_dir / "wikitext-2", WIKI_FILES, corpora)

    extracted = tmp_path / "downloads" / "simple-examples" / "data"
    extracted.mkdir(parents=True)
    for name in PTB_FILES:
        (extracted / name).write_bytes(corpora[name])
    assert data_cli(["--data-dir", str(data_dir), "import", "ptb", str(tmp_path / "downloads" / "simple-examples")]) == 0
    assert_installed(data_dir / "ptb", PTB_FILES, corpora)
    assert leftovers(data_dir) == []

    capsys.readouterr()
    assert data_cli(["info", "--data-dir", str(data_dir)]) == 0
    table = capsys.readouterr().out
    for name in (*PTB_FILES, *WIKI_FILES):
        line = next(row for row in table.splitlines() if f" {name} " in row)
        assert VERIFIED in line
    char_line = next(row for row in table.splitlines() if " ptb.char.train.txt " in row)
    assert "missing" in char_line


def test_import_rejects_wrong_files(tmp_path, caplog) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in PTB_FILES:
        (folder / name).write_text("not the treebank\n")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        import_dataset("ptb", folder, tmp_path / "data" / "ptb")
    assert not (tmp_path / "data" / "ptb").exists()
    with pytest.raises(FileNotFoundError, match="expected an archive"):
        import_dataset("ptb", tmp_path / "nowhere.tgz", tmp_path / "data" / "ptb")


def test_cli_download_with_source(server, archives, corpora, tmp_path) -> None:
    url = server.serve("/simple-examples.tgz", archives["simple-examples.tgz"])
    data_dir = tmp_path / "data"
    # The first source delivers, so the configured public sources are never tried.
    assert data_cli(["download", "ptb", "--data-dir", str(data_dir), "--source", url]) == 0
    assert_installed(data_dir / "ptb", PTB_FILES, corpora)
    assert data_cli(["download", "ptb", "--data-dir", str(data_dir), "--source", url]) == 0
    assert server.requests == ["/simple-examples.tgz"]


def test_ensure_dataset_respects_download_flag(server, archives, corpora, tmp_path) -> None:
    url = server.serve("/simple-examples.tgz", archives["simple-examples.tgz"])
    folder = tmp_path / "ptb"
    config = DatasetConfig(path=str(folder), download=False, sources=[url])
    with pytest.raises(FileNotFoundError) as info:
        ensure_dataset(config, folder)
    assert "dataset.download=false" in str(info.value)
    assert "python -m awdlm.data download ptb" in str(info.value)
    assert server.requests == []

    config.download = True
    ensure_dataset(config, folder)
    assert_installed(folder, PTB_FILES, corpora)


def test_ensure_dataset_skips_custom_text(tmp_path) -> None:
    config = DatasetConfig(name="text", path=str(tmp_path), train="train.txt", valid="valid.txt", test="test.txt")
    ensure_dataset(config, tmp_path)  # nothing to download; the loader reports the missing files
    assert os.listdir(tmp_path) == []


def test_interrupted_download_leaves_nothing(server, archives, corpora, tmp_path, monkeypatch) -> None:
    url = server.serve("/simple-examples.tgz", archives["simple-examples.tgz"])
    parent = tmp_path / "data"

    def interrupt(*args: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C after the archive is fetched and unpacked, before the files are verified.
    monkeypatch.setattr("awdlm.data.download.verify", interrupt)
    with pytest.raises(KeyboardInterrupt):
        download_dataset("ptb", parent / "ptb", [url])
    assert not (parent / "ptb").exists()
    assert leftovers(parent) == []

    monkeypatch.undo()
    assert download_dataset("ptb", parent / "ptb", [url]) is True
    assert_installed(parent / "ptb", PTB_FILES, corpora)


def test_cli_download_all_shares_archive(server, archives, corpora, tmp_path) -> None:
    tgz_url = server.serve("/simple-examples.tgz", archives["simple-examples.tgz"])
    zip_url = server.serve("/wikitext-2-v1.zip", archives["wikitext-2-v1.zip"])
    data_dir = tmp_path / "data"
    # Every dataset finds its files in one of these, so the public sources are never tried.
    arguments = ["download", "all", "--data-dir", str(data_dir), "--source", tgz_url, "--source", zip_url]
    assert data_cli(arguments) == 0
    assert_installed(data_dir / "ptb", PTB_FILES, corpora)
    assert_installed(data_dir / "wikitext-2", WIKI_FILES, corpora)
    assert_installed(data_dir / "ptb_char", CHAR_FILES, corpora)
    assert server.requests == ["/simple-examples.tgz", "/wikitext-2-v1.zip"]
    assert leftovers(data_dir) == []


def test_damaged_shared_archive_not_reused(server, archives, tmp_path) -> None:
    data = archives["simple-examples.tgz"]
    url = server.serve("/simple-examples.tgz", data[: len(data) // 4])
    archive_dir = tmp_path / "archives"
    archive_dir.mkdir()
    for _ in range(2):
        with pytest.raises(DownloadError, match="damaged"):
            download_dataset("ptb", tmp_path / "ptb", [url], archive_dir=archive_dir)
    assert server.requests == ["/simple-examples.tgz", "/simple-examples.tgz"]
    assert list(archive_dir.iterdir()) == []
