"""Where decoded data is kept (``cnnkit_home``), and the digests that key it by its source's content.

The stores themselves are ``data.store``'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from cnnkit.fileio import atomic_write_text

_DIGEST_BYTES = 20


def cnnkit_home() -> Path:
    """Return cnnkit's data folder: ``$CNNKIT_HOME`` or ``~/.cache/cnnkit``, created if missing."""
    configured = os.environ.get("CNNKIT_HOME")
    home = Path(configured).expanduser() if configured else Path.home() / ".cache" / "cnnkit"
    home.mkdir(parents=True, exist_ok=True)
    return home


def hash_file(path: Path) -> str:
    """Return the blake2b hex digest of the bytes of ``path``."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, lambda: hashlib.blake2b(digest_size=_DIGEST_BYTES)).hexdigest()


def remembered_hash_file(path: Path, cache_dir: Path, refresh: bool = False) -> str:
    """``hash_file(path)``, remembered in ``cache_dir/hashes`` for this very file.

    Hashing a 400,000-image zip reads 400 MB (over a second); a later load of the unchanged file
    reads the digest back instead. "Unchanged" is the same path, size, modification time (in
    nanoseconds), inode and device: any write to the file changes its modification time.
    ``refresh``: hash the bytes again whatever is remembered (and remember the new digest).
    """
    status = Path(path).stat()
    facts = (Path(path).resolve(), status.st_size, status.st_mtime_ns, status.st_ino, status.st_dev)
    identity = "\0".join(str(fact) for fact in facts)
    memo = cache_dir / "hashes" / hashlib.blake2b(identity.encode(), digest_size=16).hexdigest()
    try:
        if refresh:
            raise FileNotFoundError(memo)  # as if nothing were remembered
        remembered = memo.read_text(encoding="ascii").strip()
        if len(remembered) == 2 * _DIGEST_BYTES and all(c in "0123456789abcdef" for c in remembered):
            return remembered
    except (OSError, UnicodeDecodeError):
        pass
    digest = hash_file(path)
    with contextlib.suppress(OSError):  # a read-only cache only costs the hashing next time
        atomic_write_text(memo, digest + "\n")
    return digest


def hash_listing(entries: Iterable[tuple[str, int, int]]) -> str:
    """Return a digest of ``(relative path, size, mtime_ns)`` entries, in sorted order.

    Cheaper than hashing the bytes of a folder of images, and any edit, addition or removal
    changes a size or a modification time.
    """
    digest = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    for relative_path, size, mtime_ns in sorted(entries):
        digest.update(f"{relative_path}\0{size}\0{mtime_ns}\n".encode())
    return digest.hexdigest()
