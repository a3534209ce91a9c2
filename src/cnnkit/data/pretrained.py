"""Pretrained weight files: where PyTorch publishes them, their checksums, download and reading.

The files are the ImageNet weights torchvision's model builders load (download.pytorch.org/models),
in torchvision's state-dict layout, which ``cnnkit.models.resnet`` reproduces. This module knows
URLs and files only, nothing of models: it hands back a verified path or a dict of tensors.
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnkit.data.cache import cnnkit_home
from cnnkit.data.download import download
from cnnkit.data.errors import DataError, DownloadError

PRETRAINED_BASE_URL = "https://download.pytorch.org/models"
# A mirror, or a local server in tests: file names are appended to it.
PRETRAINED_URL_VARIABLE = "CNNKIT_PRETRAINED_URL"

# The normalisation the ImageNet weights were trained with (RGB, pixels scaled to [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainedWeights:
    """One published weights file and what its weights expect."""

    file_name: str
    # PyTorch names each file <model>-<first 8 hex digits of its SHA-256>.pth, and torch.hub
    # verifies exactly that prefix (check_hash): we store and verify the same prefix, as the
    # full digest is published nowhere.
    sha256_prefix: str
    description: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


PRETRAINED_WEIGHTS: dict[str, PretrainedWeights] = {
    "resnet18": PretrainedWeights(
        "resnet18-f37072fd.pth", "f37072fd", "ImageNet-1k, torchvision IMAGENET1K_V1, 69.8 % top-1"
    ),
    "resnet50": PretrainedWeights(
        "resnet50-11ad3fa6.pth", "11ad3fa6", "ImageNet-1k, torchvision IMAGENET1K_V2, 80.9 % top-1"
    ),
}


def pretrained_weights_entry(name: str) -> PretrainedWeights:
    """The table entry for ``name``; a ``ValueError`` listing the available names otherwise."""
    if name not in PRETRAINED_WEIGHTS:
        raise ValueError(
            f"No pretrained weights for {name!r}. Available: {', '.join(sorted(PRETRAINED_WEIGHTS))}."
        )
    return PRETRAINED_WEIGHTS[name]


def pretrained_weights_url(name: str) -> str:
    """Where the weights of ``name`` are downloaded from: ``$CNNKIT_PRETRAINED_URL`` or PyTorch's site."""
    base = os.environ.get(PRETRAINED_URL_VARIABLE) or PRETRAINED_BASE_URL
    return f"{base.rstrip('/')}/{pretrained_weights_entry(name).file_name}"


def pretrained_weights_file(
    name: str, source: str | os.PathLike | None = None, progress: bool = True
) -> Path:
    """The path of the pretrained weights of ``name``: ``source`` when given, else the verified
    copy in ``cnnkit_home() / "weights"``, downloaded (atomically, checksummed) if missing or damaged.

    A ``source`` file is the user's own and is not checked against the published hash (it may be
    a fine-tuned or converted file); ``read_state_dict`` tells whether it holds weights.

    Raises:
        ValueError: no pretrained weights are known for ``name``.
        DataError: ``source`` is missing or unreadable, or the download's checksum is wrong.
        DownloadError: offline or a server error; the one-line message says how to pass a file.
    """
    weights = pretrained_weights_entry(name)
    if source is not None:
        return _readable_file(Path(source))
    url = pretrained_weights_url(name)
    destination = cnnkit_home() / "weights" / weights.file_name
    try:
        return download(url, destination, sha256_prefix=weights.sha256_prefix, progress=progress)
    except DownloadError as error:
        raise DownloadError(
            f"Could not download the {name} weights from {url} ({error}). Offline? Download that file "
            f"elsewhere and pass it: --pretrained path/to/{weights.file_name}"
        ) from error


def _readable_file(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"Pretrained weights file not found: {path}")
    if not path.is_file():
        raise DataError(f"{path} is not a file; pass the weights file itself (a .pth file).")
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as error:
        raise DataError(f"Cannot read the weights file {path} ({error.strerror or error}).") from None
    return path


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file by name, on the CPU.

    Accepts a plain state dict (what PyTorch publishes) or a dict holding one under
    ``"state_dict"`` or ``"model"`` (what training scripts commonly save). Loaded with
    ``weights_only=True``: a file that would need code to unpickle is refused, not run.

    Raises:
        DataError: one line naming the file: missing, truncated, not a PyTorch file, or no tensors.
    """
    path = _readable_file(Path(path))
    try:
        with warnings.catch_warnings():
            # torch's notes about foreign pickles: the one-line error below says what matters.
            warnings.simplefilter("ignore")
            contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # torch's own message suggests weights_only=False, which is exactly what we must not do.
        raise DataError(f"Cannot read {path} as PyTorch weights: {_why_unreadable(path, error)}.") from None
    for key in ("state_dict", "model"):
        if isinstance(contents, dict) and isinstance(contents.get(key), dict):
            contents = contents[key]
            break
    if not isinstance(contents, dict) or not contents:
        raise DataError(f"{path} holds no state dict (a dict of tensors by parameter name).")
    for key, value in contents.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise DataError(
                f"{path} is not a state dict: its entry {key!r} is a {type(value).__name__}, not a tensor."
            )
    return contents


def _why_unreadable(path: Path, error: Exception) -> str:
    """torch.save writes a zip archive (``PK``); files of torch < 1.6 are bare pickles (``0x80``)."""
    with open(path, "rb") as file:
        head = file.read(2)
    if not head:
        return "the file is empty (0 bytes)"
    if head != b"PK" and head[:1] != b"\x80":
        return "it is not a PyTorch weights file"
    if isinstance(error, pickle.UnpicklingError) and "weights only" in str(error).lower():
        return (
            "it holds objects other than tensors and plain containers, which cnnkit refuses to load "
            "because they could run code"
        )
    return "the file is truncated or damaged; download or copy it again"
