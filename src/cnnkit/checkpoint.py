"""Self-describing checkpoints: everything needed to predict is in the file.

A checkpoint is a plain dict of tensors, strings, numbers, lists and dicts, so it loads with
``torch.load(weights_only=True)``, which cannot run code hidden in a crafted file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit import __version__
from cnnkit.engine.preprocess import Normalization
from cnnkit.fileio import atomic_write_with
from cnnkit.models import create_model

FORMAT = "cnnkit-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """The contents of a checkpoint file, unpacked."""

    model_name: str
    model_arguments: dict[str, Any]
    class_names: list[str]
    image_size: int
    normalization: Normalization
    state_dict: dict[str, torch.Tensor]
    recipe: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    cnnkit_version: str = __version__
    optimizer_state: dict[str, Any] | None = None
    # last.pt only: step, RNG states, data position, history... (engine.training_state)
    training_state: dict[str, Any] | None = None

    def build_model(self) -> nn.Module:
        """The model, rebuilt from the registry and loaded with the stored weights (on CPU)."""
        model = create_model(self.model_name, **self.model_arguments)
        model.load_state_dict(self.state_dict)
        return model


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically: the previous file survives any failure mid-write."""
    contents = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cnnkit_version": checkpoint.cnnkit_version,
        "model_name": checkpoint.model_name,
        "model_arguments": dict(checkpoint.model_arguments),
        "class_names": list(checkpoint.class_names),
        "image_size": int(checkpoint.image_size),
        "normalization": checkpoint.normalization.to_dict(),
        "recipe": to_plain(checkpoint.recipe),
        "config": to_plain(checkpoint.config),
        "epoch": int(checkpoint.epoch),
        "metrics": {key: float(value) for key, value in checkpoint.metrics.items()},
        "state_dict": {
            key: value.detach().cpu().contiguous() for key, value in checkpoint.state_dict.items()
        },
    }
    if checkpoint.optimizer_state is not None:
        contents["optimizer_state"] = checkpoint.optimizer_state
    if checkpoint.training_state is not None:
        contents["training_state"] = checkpoint.training_state
    path = Path(path)
    atomic_write_with(path, lambda file: torch.save(contents, file))
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; fails clearly on anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # torch's own message suggests weights_only=False, which is exactly what we must not do.
        reason = (
            "it holds objects other than tensors and plain containers, which cnnkit refuses to load "
            "because they could run code"
            if _looks_like_torch_file(path)
            else "it is not a PyTorch checkpoint file"
        )
        raise ValueError(f"Cannot read {path} as a cnnkit checkpoint: {reason}.") from None
    if not isinstance(contents, dict) or contents.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cnnkit checkpoint (no '{FORMAT}' marker).")
    if contents.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path} was written by a newer cnnkit ({contents.get('cnnkit_version')}); "
            f"this is cnnkit {__version__}. Upgrade cnnkit to read it."
        )
    return Checkpoint(
        model_name=contents["model_name"],
        model_arguments=contents["model_arguments"],
        class_names=list(contents["class_names"]),
        image_size=contents["image_size"],
        normalization=Normalization.from_dict(contents["normalization"]),
        state_dict=contents["state_dict"],
        recipe=contents.get("recipe", {}),
        config=contents.get("config", {}),
        epoch=contents.get("epoch", 0),
        metrics=contents.get("metrics", {}),
        cnnkit_version=contents.get("cnnkit_version", "unknown"),
        optimizer_state=contents.get("optimizer_state"),
        training_state=contents.get("training_state"),
    )


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (``PK``); older files are bare pickles (``0x80``)."""
    with open(path, "rb") as file:
        return file.read(2) in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def to_plain(value: Any) -> Any:
    """Tuples -> lists, paths -> strings, recursively: only types ``weights_only`` accepts."""
    if isinstance(value, dict):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, bool):
        return value
    for kind in (
        str,
        int,
        float,
    ):  # exact built-in types: subclasses (TorchVersion) don't serialise
        if isinstance(value, kind):
            return kind(value)
    return str(value)
