"""Downloads against a local HTTP server: success, re-fetch, checksum and offline errors."""

from __future__ import annotations

import hashlib
import socket

import pytest

from cnnkit.data import DataError, download_cifar10
from cnnkit.data.download import download

PAYLOAD = bytes(range(256)) * 64
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_download_writes_verified_file(server, tmp_path):
    server.routes["/file.bin"] = (PAYLOAD, True)
    destination = tmp_path / "sub" / "file.bin"
    assert download(f"{server.url}/file.bin", destination, PAYLOAD_MD5, progress=False) == destination
    assert destination.read_bytes() == PAYLOAD
    # A verified copy is reused without contacting the server.
    download(f"{server.url}/file.bin", destination, PAYLOAD_MD5, progress=False)
    assert server.requests == ["/file.bin"]
    # Nothing but the file and its verification stamp: no temporary file is left behind.
    assert sorted(path.name for path in destination.parent.iterdir()) == ["file.bin", "file.bin.verified"]


def test_corrupt_existing_file_is_fetched_again(server, tmp_path, capsys):
    server.routes["/file.bin"] = (PAYLOAD, True)
    destination = tmp_path / "file.bin"
    destination.write_bytes(PAYLOAD[:100])  # an interrupted earlier download
    download(f"{server.url}/file.bin", destination, PAYLOAD_MD5, progress=False)
    assert destination.read_bytes() == PAYLOAD
    assert "downloading it again" in capsys.readouterr().err


def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    server.routes["/file.bin"] = (b"not the archive", True)
    destination = tmp_path / "out" / "file.bin"
    with pytest.raises(DataError, match=f"Checksum mismatch.*expected md5 {PAYLOAD_MD5}"):
        download(f"{server.url}/file.bin", destination, PAYLOAD_MD5, progress=False)
    assert list(destination.parent.iterdir()) == []


def test_unreachable_server_gives_offline_message(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/cifar-10-python.tar.gz"
    with pytest.raises(DataError) as caught:
        download_cifar10(tmp_path, url=url, progress=False)
    message = str(caught.value)
    assert message.startswith(f"Could not download CIFAR-10 from {url} (")
    assert "--data /path/to/cifar-10-python.tar.gz" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_reported(server, tmp_path):
    with pytest.raises(DataError, match=r"HTTP 404.*--data"):
        download_cifar10(tmp_path, url=f"{server.url}/missing.tar.gz", progress=False)


def test_progress_without_content_length(server, tmp_path, capsys):
    server.routes["/file.bin"] = (PAYLOAD, False)
    destination = download(f"{server.url}/file.bin", tmp_path / "f.bin", PAYLOAD_MD5)
    assert destination.read_bytes() == PAYLOAD
    assert "Downloading f.bin" in capsys.readouterr().err


def test_environment_overrides_url_and_md5(server, tmp_path, monkeypatch):
    server.routes["/mirror.tar.gz"] = (PAYLOAD, True)
    monkeypatch.setenv("CNNKIT_CIFAR10_URL", f"{server.url}/mirror.tar.gz")
    monkeypatch.setenv("CNNKIT_CIFAR10_MD5", PAYLOAD_MD5)
    path = download_cifar10(tmp_path, progress=False)
    assert path == tmp_path / "cifar-10-python.tar.gz"
    assert path.read_bytes() == PAYLOAD


def test_invalid_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"md5 must be a 32-character hex digest\. Received: md5='x'"):
        download("http://127.0.0.1/x", tmp_path / "x", "x")
    with pytest.raises(
        ValueError, match=r"sha256_prefix must be 8 to 64 hex digits\. Received: sha256_prefix='abc'"
    ):
        download("http://127.0.0.1/x", tmp_path / "x", sha256_prefix="abc")
    with pytest.raises(ValueError, match=r"Pass exactly one of md5 and sha256_prefix"):
        download("http://127.0.0.1/x", tmp_path / "x", PAYLOAD_MD5, sha256_prefix="0123abcd")
    with pytest.raises(ValueError, match=r"Pass exactly one of md5 and sha256_prefix"):
        download("http://127.0.0.1/x", tmp_path / "x")


def test_a_sha256_prefix_verifies_the_download(server, tmp_path):
    server.routes["/w.pth"] = (PAYLOAD, True)
    prefix = hashlib.sha256(PAYLOAD).hexdigest()[:8]
    destination = download(f"{server.url}/w.pth", tmp_path / "w.pth", sha256_prefix=prefix, progress=False)
    assert destination.read_bytes() == PAYLOAD
    wrong = "0" * 8 if prefix != "0" * 8 else "1" * 8
    with pytest.raises(DataError, match=f"expected a SHA-256 digest starting with {wrong}, got {prefix}"):
        download(f"{server.url}/w.pth", tmp_path / "other.pth", sha256_prefix=wrong, progress=False)
    assert not (tmp_path / "other.pth").exists()


def test_load_dataset_downloads_cifar10(server, fake_cifar, monkeypatch, isolated_home):
    from cnnkit.data import load_dataset

    server.routes["/c.tar.gz"] = (fake_cifar.archive.read_bytes(), True)
    monkeypatch.setenv("CNNKIT_CIFAR10_URL", f"{server.url}/c.tar.gz")
    monkeypatch.setenv("CNNKIT_CIFAR10_MD5", fake_cifar.md5)
    splits = load_dataset("cifar10", progress=False)
    archive = isolated_home / "cifar-10-python.tar.gz"
    assert splits.source == f"cifar10 ({archive})"
    assert len(splits.train) == 100 and len(splits.test) == 20
    assert archive.read_bytes() == fake_cifar.archive.read_bytes()


def test_cli_trains_on_downloaded_cifar10_and_evaluates_its_test_split(
    server, fake_cifar, monkeypatch, tmp_path, capsys
):
    import json

    from cnnkit.cli import main

    server.routes["/c.tar.gz"] = (fake_cifar.archive.read_bytes(), True)
    monkeypatch.setenv("CNNKIT_CIFAR10_URL", f"{server.url}/c.tar.gz")
    monkeypatch.setenv("CNNKIT_CIFAR10_MD5", fake_cifar.md5)
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    output = capsys.readouterr().out
    assert "Test (20 images, best.pt of epoch 1)" in output
    assert main(["evaluate", str(tmp_path / "runs" / "train" / "last.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "test" and result["count"] == 20
    assert len(server.requests) == 1  # downloaded once, then read from the cache


def test_cli_offline_is_one_line_saying_how_to_pass_a_local_copy(monkeypatch, tmp_path, capsys):
    from cnnkit.cli import main

    monkeypatch.setenv("CNNKIT_CIFAR10_URL", f"http://127.0.0.1:{closed_port()}/c.tar.gz")
    assert main(["train", "--epochs", "1", "--out", str(tmp_path), "--quiet"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("cnnkit: error: Could not download CIFAR-10") and "--data" in error[-1]


def test_a_verified_file_is_not_hashed_again_until_it_changes(server, tmp_path, monkeypatch):
    import importlib

    download_module = importlib.import_module("cnnkit.data.download")  # the module, not the function

    server.routes["/a.bin"] = (PAYLOAD, True)
    destination = tmp_path / "a.bin"
    download(f"{server.url}/a.bin", destination, PAYLOAD_MD5, progress=False)
    hashed = []
    real_md5 = download_module.md5_of_file
    monkeypatch.setattr(download_module, "md5_of_file", lambda path: hashed.append(path) or real_md5(path))
    download(f"{server.url}/a.bin", destination, PAYLOAD_MD5, progress=False)
    assert hashed == [] and len(server.requests) == 1
    destination.write_bytes(PAYLOAD[:-1])  # changed behind cnnkit's back: verify, then fetch again
    download(f"{server.url}/a.bin", destination, PAYLOAD_MD5, progress=False)
    assert hashed == [destination] and len(server.requests) == 2
    assert destination.read_bytes() == PAYLOAD
