"""What decided each prediction, drawn: ``cnnkit predict --explain`` (issue 22).

Each classified image gets a PNG of the centre crop its network sees under the Grad-CAM heatmap
of its decided class (single-label: its top class; multi-label: its most probable label), named
``<position>-<stem>.png``: its 1-based place among the results (zero-padded, so unique and in
order) and its file name's stem made safe. Grad-CAM needs the network's gradients: a checkpoint,
never an ``.onnx`` file.

Torch-free to import, like the rest of ``cnnkit.inference``: the heatmaps are the checkpoint's
``Classifier.explanation_overlays``, and a checkpoint has loaded torch already.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.fileio import atomic_write_bytes
from cnnkit.runtime.constants import ONNX_SUFFIX

DEFAULT_FOLDER_NAME = "explanations"
# A stem keeps letters, digits, '.', '-' and '_', up to this many characters (file systems
# allow 255 bytes a name; the position and suffix need the rest).
STEM_CHARACTERS = 60
# Images explained a Grad-CAM pass: each holds its feature maps and their gradients.
EXPLAIN_BATCH_SIZE = 64


def check_explainable_path(model: str | os.PathLike) -> None:
    """Refuse, in one line, an ``.onnx`` model file for explanations (before it is loaded)."""
    if Path(model).suffix.lower() == ONNX_SUFFIX:
        raise ValueError(
            "explanations need the checkpoint: an .onnx model holds no gradients to explain with; give "
            f"the checkpoint it was exported from. Received: {os.fspath(model)!r}"
        )


def explaining_classifier(model: Any) -> Any:
    """The ``cnnkit.api.Classifier`` behind a predictor (a checkpoint's, traced or not), or the
    classifier itself; a one-line error for a model without one (an ONNX model)."""
    classifier = model if hasattr(model, "explanation_overlays") else getattr(model, "classifier", None)
    if not hasattr(classifier, "explanation_overlays"):
        path = getattr(model, "metadata", {}).get("path", type(model).__name__)
        raise ValueError(
            "explanations need the checkpoint: Grad-CAM needs the network's gradients, which an "
            f"exported model does not hold. Received: {path!r}"
        )
    return classifier


def explanation_folder(
    directory: str | os.PathLike | None, output: str | os.PathLike | None = None, force: bool = False
) -> Path:
    """The folder overlays are written into, made now.

    ``directory`` None: a new ``explanations`` folder (``explanations2``, ... when taken) beside
    ``output`` if given, else in the current folder: an earlier run's overlays are never replaced.
    A ``directory`` given must be new or empty, unless ``force``: then overlays replace the files
    of the same names in it, and nothing else there is touched.
    """
    if directory is None:
        from cnnkit.runs.folders import create_run_folder  # made atomically: two runs never share it

        return create_run_folder(Path(output).parent if output else Path("."), DEFAULT_FOLDER_NAME)
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--explain names a file; give a folder. Received: explain={os.fspath(directory)!r}")
    if not force and folder.is_dir() and any(folder.iterdir()):
        raise ValueError(
            f"The explanation folder {folder} already holds files: give a new or empty folder, --explain "
            "alone for a new one, or --force to write into it (replacing overlays of the same names). "
            f"Received: explain={os.fspath(directory)!r}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def overlay_name(position: int, path: str, width: int = 1) -> str:
    """``<position>-<stem>.png``: the position zero-padded to ``width`` digits, the stem of the
    input's last path component (a zip member's own name): letters (any script), digits, ``.``,
    ``-`` and ``_`` kept, any other character ``_``, at most ``STEM_CHARACTERS``."""
    name = re.split(r"[\\/]", path.rstrip("\\/"))[-1]
    stem = os.path.splitext(name)[0]
    safe = re.sub(r"[^\w.\-]", "_", stem).strip(".")[:STEM_CHARACTERS] or "image"
    return f"{position:0{width}d}-{safe}.png"


class ExplanationWriter:
    """Writes the overlays of classified images into ``folder`` (made if missing), a batch at a time.

    ``model``: a checkpoint's predictor or a ``Classifier`` (see ``explaining_classifier``);
    ``count``: how many results there will be, which sets the positions' width.
    """

    def __init__(self, model: Any, folder: str | os.PathLike, count: int = 0) -> None:
        self.classifier = explaining_classifier(model)
        self.folder = Path(folder)
        self.width = len(str(max(count, 1)))

    def write(
        self, positions: Sequence[int], paths: Sequence[str], images: np.ndarray, probabilities: np.ndarray
    ) -> list[str]:
        """The overlay of each of ``images`` (uint8 ``(N, H, W, 3)``, decoded as prediction decodes)
        for its most probable class in ``probabilities`` (the predictor's own, so the overlay
        explains the answer given), written; their paths, in order."""
        from PIL import Image

        # The task ranks (no argmax here): a single-label model's top class, a multi-label model's
        # most probable label.
        decided = self.classifier.task.top_k(probabilities, 1)[0][:, 0]
        overlays = self.classifier.explanation_overlays(images, decided, batch_size=EXPLAIN_BATCH_SIZE)
        self.folder.mkdir(parents=True, exist_ok=True)
        written = []
        for position, path, overlay in zip(positions, paths, overlays, strict=True):
            target = self.folder / overlay_name(position, path, self.width)
            buffer = io.BytesIO()
            Image.fromarray(overlay).save(buffer, format="PNG")
            atomic_write_bytes(target, buffer.getvalue())
            written.append(str(target))
        return written
