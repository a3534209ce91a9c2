"""Predicting at a test-time augmentation level other than the model's own (``predict --tta N``).

A checkpoint's classifier runs at any level (``runtime.constants.TTA_LEVELS``): 0 the image
alone, 1 and its mirror, 2 and two one-pixel shifts (six network passes an image). An ``.onnx``
file (and a traced service graph) has its level built into the graph at export: it predicts at
that level only, and another is refused in one line. Torch-free: a ``Classifier`` is recognised
only when ``cnnkit.api`` is already imported (one cannot exist otherwise).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from cnnkit.runtime.constants import TTA_LEVELS

__all__ = ["LevelledPredictor", "at_tta", "check_tta", "own_tta"]

TTA_MEANINGS = "0: the image alone, 1: and its mirror, 2: and two one-pixel shifts, six views"


def check_tta(tta: Any, name: str = "tta") -> None:
    """Refuse, in one line naming the value and the levels allowed, anything but None (the
    model's own level) or one of ``TTA_LEVELS``."""
    if tta is None:
        return
    if isinstance(tta, bool) or not isinstance(tta, int | np.integer) or tta not in TTA_LEVELS:
        key = name.lstrip("-")
        levels = ", ".join(map(str, TTA_LEVELS))
        raise ValueError(f"{name} must be one of {levels} ({TTA_MEANINGS}). Received: {key}={tta!r}")


def at_tta(model: Any, tta: int | None) -> Any:
    """``model`` (a ``Predictor`` or a ``Classifier``) predicting at level ``tta``: itself when
    ``tta`` is None or its own level, else a ``LevelledPredictor`` over it (``model`` itself is
    left as it was). A model whose level is fixed in its graph (an ``.onnx`` file) and differs
    from ``tta`` is refused in one line saying so."""
    check_tta(tta)
    own = own_tta(model)
    if tta is None or tta == own:
        return model
    classifier = _settable_classifier(model)
    if classifier is None:
        path = getattr(model, "metadata", {}).get("path", "this model")
        raise ValueError(
            f"{path} has test-time augmentation level {own} built into its graph at export, the only "
            f"level it predicts at; for another, predict with the checkpoint or export it again "
            f"(cnnkit export --tta: the recipe's level, --no-tta: 0). Received: tta={tta}"
        )
    return LevelledPredictor(model, classifier, tta)


def own_tta(model: Any) -> int:
    """The level ``model`` predicts at unless told otherwise (its metadata's, or its classifier's)."""
    classifier = _settable_classifier(model)
    if classifier is not None:
        return int(classifier.tta)
    return int(getattr(model, "metadata", {}).get("tta", 0))


def _settable_classifier(model: Any) -> Any:
    """The ``cnnkit.api.Classifier`` whose ``tta`` ``model.predict`` runs at: the model itself or a
    checkpoint predictor's; None where a graph fixes the level (ONNX, a traced graph)."""
    api = sys.modules.get("cnnkit.api")  # not imported: no Classifier can exist, and torch stays out
    if api is None:
        return None
    if isinstance(model, api.Classifier):
        return model
    from cnnkit.inference.predictor import CheckpointPredictor  # torch-free module

    if type(model) is CheckpointPredictor:  # a subclass (or a traced wrapper) may not consult it
        return model.classifier
    return None


class LevelledPredictor:
    """``predictor`` at test-time augmentation level ``tta``: each ``predict`` sets ``classifier``'s
    level (the one ``predictor`` runs at) and puts its own back after. Every other attribute is
    ``predictor``'s; ``metadata`` says the level."""

    def __init__(self, predictor: Any, classifier: Any, tta: int) -> None:
        self.predictor = predictor
        self.levelled = classifier
        self.tta = tta
        self.metadata = {**getattr(predictor, "metadata", {}), "tta": tta}

    def __getattr__(self, name: str) -> Any:
        if name == "predictor":  # not set yet (a copy being built): no endless lookup
            raise AttributeError(name)
        return getattr(self.predictor, name)

    def __repr__(self) -> str:
        return f"LevelledPredictor({self.predictor!r}, tta={self.tta})"

    def predict(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        own = self.levelled.tta
        self.levelled.tta = self.tta
        try:
            return self.predictor.predict(images, batch_size)
        finally:
            self.levelled.tta = own
