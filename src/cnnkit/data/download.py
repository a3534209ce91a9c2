"""Downloads with a progress bar, checksum verification and atomic placement."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from cnnkit.data.cache import cnnkit_home
from cnnkit.data.errors import DataError, DownloadError
from cnnkit.fileio import atomic_open, atomic_write_text
from cnnkit.progress import ProgressBar

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FILENAME = "cifar-10-python.tar.gz"
CIFAR10_URL_VARIABLE = "CNNKIT_CIFAR10_URL"
CIFAR10_MD5_VARIABLE = "CNNKIT_CIFAR10_MD5"

# Seconds to wait for a connection or for the next bytes; a stalled server fails instead of hanging.
TIMEOUT_SECONDS = 30.0
_CHUNK_BYTES = 1 << 20
# Everything urllib and http.client raise for network trouble. Deliberately not all of OSError,
# which would also swallow a full disk while writing the file.
_NETWORK_ERRORS = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    ssl.SSLError,
)


def md5_of_file(path: Path) -> str:
    """Return the md5 hex digest of the bytes of ``path``."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "md5").hexdigest()


def download(url: str, destination: Path, md5: str, progress: bool = True) -> Path:
    """Download ``url`` to ``destination`` unless a copy with the right ``md5`` is already there.

    The bytes stream into a temporary file beside ``destination`` and are renamed over it only
    once their md5 matches, so an interrupted download never leaves a half-written file.

    Raises:
        DownloadError: the server could not be reached or answered with an HTTP error.
        DataError: the downloaded bytes do not match ``md5``.
    """
    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be a non-empty string. Received: url={url!r}")
    if not isinstance(md5, str) or len(md5) != 32:
        raise ValueError(f"md5 must be a 32-character hex digest. Received: md5={md5!r}")
    destination = Path(destination)
    if destination.is_file():
        if _stamp_matches(destination, md5):
            return destination
        if md5_of_file(destination) == md5.lower():
            _write_stamp(destination, md5)
            return destination
        print(
            f"{destination} is incomplete or corrupt (md5 mismatch); downloading it again.",
            file=sys.stderr,
        )
        destination.unlink()
    with atomic_open(destination, "wb") as file:
        received = _fetch(url, file, progress, description=f"Downloading {destination.name}")
        if received != md5.lower():
            # Raising inside atomic_open discards the temporary file: nothing is left behind.
            raise DataError(
                f"Checksum mismatch for {url}: expected md5 {md5.lower()}, got {received}. "
                "The server sent different bytes; try again later."
            )
    _write_stamp(destination, md5)
    return destination


def _stamp_path(destination: Path) -> Path:
    return destination.with_name(destination.name + ".verified")


def _stamp_matches(destination: Path, md5: str) -> bool:
    """True when ``destination`` is unchanged since its md5 was last verified.

    Files only appear here by atomic rename after a checksum, so an unchanged size and mtime mean
    unchanged bytes: the 163 MB archive is not hashed again on every run (~0.3 s).
    """
    try:
        stamp = json.loads(_stamp_path(destination).read_text())
        status = destination.stat()
    except (OSError, ValueError):
        return False
    return stamp == {"md5": md5.lower(), "size": status.st_size, "mtime_ns": status.st_mtime_ns}


def _write_stamp(destination: Path, md5: str) -> None:
    status = destination.stat()
    stamp = {"md5": md5.lower(), "size": status.st_size, "mtime_ns": status.st_mtime_ns}
    with contextlib.suppress(OSError):  # only an optimisation: next time, verify by hashing
        atomic_write_text(_stamp_path(destination), json.dumps(stamp))


def download_cifar10(
    cache_dir: Path | None = None,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    progress: bool = True,
) -> Path:
    """Download the CIFAR-10 python archive into ``cache_dir`` (default ``cnnkit_home()``).

    The environment variable ``CNNKIT_CIFAR10_URL``, when set, replaces the default ``url``
    (for mirrors, and for tests serving the archive locally); likewise ``CNNKIT_CIFAR10_MD5``
    replaces the default ``md5`` (for tests serving a small stand-in archive). Explicit other
    arguments win over both.

    Returns:
        The path of the verified ``cifar-10-python.tar.gz``.

    Raises:
        DataError: offline or server error (the message tells how to pass a local copy with
            ``--data``), or a checksum mismatch.
    """
    if url == CIFAR10_URL and os.environ.get(CIFAR10_URL_VARIABLE):
        url = os.environ[CIFAR10_URL_VARIABLE]
    if md5 == CIFAR10_MD5:
        md5 = expected_cifar10_md5()
    folder = Path(cache_dir) if cache_dir is not None else cnnkit_home()
    try:
        return download(url, folder / CIFAR10_FILENAME, md5, progress=progress)
    except DownloadError as error:
        raise DataError(
            f"Could not download CIFAR-10 from {url} ({error}). Download {CIFAR10_FILENAME} "
            f"yourself and pass it with --data /path/to/{CIFAR10_FILENAME} "
            "(or its extracted cifar-10-batches-py folder)."
        ) from error


def expected_cifar10_md5() -> str:
    """The md5 the CIFAR-10 archive must have: ``$CNNKIT_CIFAR10_MD5`` or ``CIFAR10_MD5``."""
    return os.environ.get(CIFAR10_MD5_VARIABLE) or CIFAR10_MD5


def _fetch(url: str, file: IO[bytes], progress: bool, description: str) -> str:
    """Stream ``url`` into ``file``; return the md5 of the bytes received."""
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with ProgressBar(total, description, unit="B", enabled=progress) as bar:
                while chunk := response.read(_CHUNK_BYTES):
                    file.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise DownloadError(f"HTTP {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        raise DownloadError(str(error.reason)) from error
    except _NETWORK_ERRORS as error:
        raise DownloadError(str(error) or type(error).__name__) from error
    except ValueError as error:
        # urllib raises ValueError for a malformed URL such as one without a scheme.
        raise DownloadError(str(error)) from error
    return digest.hexdigest()
