"""Reading one image file's bytes with a cap, from disk or from a zip, whatever the file claims.

No photo file is anywhere near ``MAX_FILE_BYTES``; a zip member that inflates past it is a
decompression bomb (1 MB of zip can hold 1 GiB of zeros), and a file that large on disk is not an
image anyone meant to train on. A zip member's declared size is checked before a byte is inflated,
and reads stop at the cap whatever was declared, so memory stays bounded for any input. Torch-free.
"""

from __future__ import annotations

import os
import zipfile
import zlib

MAX_FILE_BYTES = 64 * 2**20
# Bit 0 of a zip member's general-purpose flags: the member is encrypted (PKWARE APPNOTE 4.4.4).
_ENCRYPTED_FLAG = 0x1
# What reading one zip member can raise: damaged data, a bad CRC, encryption (EncryptedMemberError;
# zipfile's own RuntimeError where a member is opened without read_member), a compression method
# this Python lacks (NotImplementedError), a name the archive lacks (KeyError).
READ_ERRORS = (
    OSError,
    KeyError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    RuntimeError,
    NotImplementedError,
    ValueError,
)


class FileTooLargeError(ValueError):
    """A file (or zip member) larger than the cap; the message is the short reason."""


class EncryptedMemberError(ValueError):
    """A zip member that is encrypted; the message is the short reason, naming the member."""


def is_encrypted(info: zipfile.ZipInfo) -> bool:
    """Whether zip member ``info`` is encrypted (zipfile would ask for a password to read it)."""
    return bool(info.flag_bits & _ENCRYPTED_FLAG)


def encrypted_reason(name: str) -> str:
    """The one reason an encrypted member is refused, the same wherever a zip is read."""
    return f"member {name!r} is encrypted; cnnkit reads unencrypted zips only"


def read_member(archive: zipfile.ZipFile, name: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of member ``name``, refused if it declares or inflates to more than ``limit``."""
    info = archive.getinfo(name)
    if is_encrypted(info):  # checked up front: zipfile's own message asks for a password
        raise EncryptedMemberError(encrypted_reason(name))
    _check_size(info.file_size, limit)
    with archive.open(info) as member:
        return _read_capped(member, info.file_size, limit)


def read_file(path: str | os.PathLike, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the file at ``path``, refused if it holds more than ``limit``."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        _check_size(size, limit)
        return _read_capped(file, size, limit)


def describe_read_error(error: BaseException) -> str:
    """One short line for a failed read, e.g. ``cannot read (BadZipFile: Bad CRC-32 ...)``."""
    if isinstance(error, FileTooLargeError | EncryptedMemberError):
        return str(error)
    detail = getattr(error, "strerror", None) or error
    return f"cannot read ({type(error).__name__}: {detail})"


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise FileTooLargeError(
            f"too large to be an image ({_mebibytes(size)}; the limit is {_mebibytes(limit)} a file)"
        )


def _read_capped(file, size: int, limit: int) -> bytes:
    # read(n) allocates n bytes up front: ask for what the file declares (one more shows a lie).
    data = file.read(size + 1)
    if len(data) > min(size, limit):  # grew while read, or inflates past what it declared
        raise FileTooLargeError(f"too large to be an image (over {_mebibytes(limit)}, the limit a file)")
    return data


def _mebibytes(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"
