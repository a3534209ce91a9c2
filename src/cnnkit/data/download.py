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
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cnnkit.data.cache import cnnkit_home
from cnnkit.data.errors import DataError, DownloadError
from cnnkit.fileio import atomic_open, atomic_write_text, json_text
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


def sha256_of_file(path: Path) -> str:
    """Return the SHA-256 hex digest of the bytes of ``path``."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


@dataclass(frozen=True)
class _Checksum:
    """What the bytes must hash to: a whole md5 digest, or the start of a SHA-256 digest."""

    algorithm: str  # "md5" or "sha256"
    expected: str  # lower-case hex: all 32 digits of an md5, or a prefix of a SHA-256

    @classmethod
    def from_arguments(cls, md5: str | None, sha256_prefix: str | None) -> _Checksum:
        if (md5 is None) == (sha256_prefix is None):
            raise ValueError(
                f"Pass exactly one of md5 and sha256_prefix. Received: md5={md5!r}, "
                f"sha256_prefix={sha256_prefix!r}"
            )
        if md5 is not None:
            if not isinstance(md5, str) or len(md5) != 32 or not _is_hex(md5):
                raise ValueError(f"md5 must be a 32-character hex digest. Received: md5={md5!r}")
            return cls("md5", md5.lower())
        # Fewer than 8 digits would let a damaged file pass too easily (1 in 4 billion at 8).
        prefix_length = len(sha256_prefix) if isinstance(sha256_prefix, str) else 0
        if not 8 <= prefix_length <= 64 or not _is_hex(sha256_prefix):
            raise ValueError(
                f"sha256_prefix must be 8 to 64 hex digits. Received: sha256_prefix={sha256_prefix!r}"
            )
        return cls("sha256", sha256_prefix.lower())

    def matches(self, hexdigest: str) -> bool:
        # For md5 both have 32 digits, so "starts with" is equality.
        return hexdigest.lower().startswith(self.expected)

    def digest_of_file(self, path: Path) -> str:
        return md5_of_file(path) if self.algorithm == "md5" else sha256_of_file(path)

    def stamp_key(self) -> str:
        # "md5" keeps the stamps written before SHA-256 prefixes existed valid.
        return "md5" if self.algorithm == "md5" else "sha256_prefix"

    def describe(self) -> str:
        if self.algorithm == "md5":
            return f"md5 {self.expected}"
        return f"a SHA-256 digest starting with {self.expected}"


def _is_hex(text: str) -> bool:
    return all(character in "0123456789abcdefABCDEF" for character in text)


def download(
    url: str,
    destination: Path,
    md5: str | None = None,
    progress: bool = True,
    *,
    sha256_prefix: str | None = None,
) -> Path:
    """Download ``url`` to ``destination`` unless a copy with the right checksum is already there.

    The checksum is either ``md5`` (the whole digest) or ``sha256_prefix`` (the first digits of
    the SHA-256 digest, as PyTorch publishes them in its weight files' names); pass exactly one.
    The bytes stream into a temporary file beside ``destination`` and are renamed over it only
    once their checksum matches, so an interrupted download never leaves a half-written file.

    Raises:
        DownloadError: the server could not be reached or answered with an HTTP error.
        DataError: the downloaded bytes do not match the checksum.
    """
    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be a non-empty string. Received: url={url!r}")
    checksum = _Checksum.from_arguments(md5, sha256_prefix)
    destination = Path(destination)
    if destination.is_file():
        if _stamp_matches(destination, checksum):
            return destination
        if checksum.matches(checksum.digest_of_file(destination)):
            _write_stamp(destination, checksum)
            return destination
        print(
            f"{destination} is incomplete or corrupt ({checksum.algorithm} mismatch); downloading it again.",
            file=sys.stderr,
        )
        destination.unlink()
    with atomic_open(destination, "wb") as file:
        received = _fetch(url, file, progress, f"Downloading {destination.name}", checksum.algorithm)
        if not checksum.matches(received):
            # Raising inside atomic_open discards the temporary file: nothing is left behind.
            raise DataError(
                f"Checksum mismatch for {url}: expected {checksum.describe()}, got {received}. "
                "The server sent different bytes; try again later."
            )
    _write_stamp(destination, checksum)
    return destination


def _stamp_path(destination: Path) -> Path:
    return destination.with_name(destination.name + ".verified")


def _stamp_matches(destination: Path, checksum: _Checksum) -> bool:
    """True when ``destination`` is unchanged since its checksum was last verified.

    Files only appear here by atomic rename after a checksum, so an unchanged size and mtime mean
    unchanged bytes: the 163 MB archive is not hashed again on every run (~0.3 s).
    """
    try:
        stamp = json.loads(_stamp_path(destination).read_text())
        status = destination.stat()
    except (OSError, ValueError):
        return False
    return stamp == _stamp(checksum, status)


def _stamp(checksum: _Checksum, status: os.stat_result) -> dict[str, str | int]:
    return {checksum.stamp_key(): checksum.expected, "size": status.st_size, "mtime_ns": status.st_mtime_ns}


def _write_stamp(destination: Path, checksum: _Checksum) -> None:
    stamp = _stamp(checksum, destination.stat())
    with contextlib.suppress(OSError):  # only an optimisation: next time, verify by hashing
        atomic_write_text(_stamp_path(destination), json_text(stamp))


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


def _fetch(url: str, file: IO[bytes], progress: bool, description: str, algorithm: str = "md5") -> str:
    """Stream ``url`` into ``file``; return the ``algorithm`` hex digest of the bytes received."""
    digest = hashlib.new(algorithm)
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
