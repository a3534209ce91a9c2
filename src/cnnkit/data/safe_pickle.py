"""A pickle loader that admits only what CIFAR-10 batches hold.

Unpickling runs whatever callables the file names, so a doctored archive could run commands on
load. CIFAR-10 batches need nothing beyond numpy's array reconstruction: every other global is
refused before it is ever imported.
"""

from __future__ import annotations

import importlib
import io
import pickle
from typing import Any

import numpy as np

from cnnkit.data.errors import DataError


def _numpy_multiarray() -> Any:
    # numpy 2 moved numpy.core to numpy._core; old pickles still name numpy.core.
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        return importlib.import_module("numpy.core.multiarray")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    multiarray = _numpy_multiarray()
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` resolves only numpy array reconstruction.

    Args:
        file: binary file holding the pickle.
        source_name: file name used in error messages.
    """

    def __init__(self, file: io.BufferedIOBase, source_name: str) -> None:
        # CIFAR-10 batches are Python 2 pickles: "bytes" keeps their str values as bytes.
        super().__init__(file, encoding="bytes")
        self.source_name = source_name
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        resolved = self.allowed.get((module, name))
        if resolved is None:
            raise DataError(
                f"cnnkit refuses to load {module}.{name} from {self.source_name}: "
                "CIFAR-10 batches hold only arrays, lists, strings and numbers"
            )
        return resolved


def load_restricted_pickle(data: bytes, source_name: str) -> Any:
    """Unpickle ``data`` with ``RestrictedUnpickler``; raise ``DataError`` on any failure."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source_name).load()
    except DataError:
        raise
    except Exception as error:
        # A corrupt pickle can raise nearly anything (IndexError, TypeError, numpy errors...).
        raise DataError(
            f"{source_name} is not a readable CIFAR-10 batch ({type(error).__name__}: {error})"
        ) from error
