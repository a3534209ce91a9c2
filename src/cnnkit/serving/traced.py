"""A checkpoint's whole prediction as one TorchScript call, which runs without Python's GIL.

Eager PyTorch returns to Python between operations, and each return needs the GIL, which the
event loop holds while it parses HTTP and writes JSON. On a busy service the model thread then
waits at every layer: measured here, a batch of 16 took 10 ms alone and 280 ms beside one
Python thread that never blocks. Traced, the pixels-to-probabilities graph (scaling, network,
test-time augmentation, softmax) runs in C++ from start to end, and the same batch took 9 ms
alone and the model and the event loop work at the same time.

The traced graph is the module ``Classifier.predict`` runs (``runtime.pixel_classifier.PixelClassifier``),
in the same precision (the casts autocast inserts are recorded in it), and is checked against it
before it is used.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from cnnkit.inference.predictor import CheckpointPredictor
from cnnkit.runtime.pixel_classifier import PixelClassifier, WithProbabilities

# Probabilities of the traced graph and of Classifier.predict may differ by rounding only.
TOLERANCE = 1e-4

logger = logging.getLogger("cnnkit.serving")


class TracedPredictor:
    """``predictor`` (a checkpoint's) with its prediction traced: same interface, same numbers.

    Attributes ``class_names``, ``image_size`` and ``metadata`` are the checkpoint predictor's;
    ``predict(uint8 images (N, H, W, 3)) -> probabilities (N, classes)`` as a NumPy array.
    """

    def __init__(self, predictor: CheckpointPredictor, example_batch: int = 8) -> None:
        self.predictor = predictor
        self.class_names = predictor.class_names
        self.image_size = predictor.image_size
        self.resize_size = predictor.resize_size
        self.metadata: dict[str, Any] = {**predictor.metadata, "runner": "torchscript"}
        self.device = predictor.classifier.device
        classifier = predictor.classifier
        # The eager classifier, which explanations copy (serving.explanations): a traced graph
        # has no layers to hook.
        self.classifier = classifier
        # The very module Classifier.predict runs (runtime.pixel_classifier), the task's output
        # activation (single-label: softmax) included.
        self.task = classifier.task
        self.thresholds = predictor.thresholds  # multi-label: a threshold a label (None: 0.5 each)
        module = WithProbabilities(
            PixelClassifier(
                classifier.network,
                classifier.normalization,
                classifier.tta,
                classifier.precision,
                logit_offset=classifier.logit_offset,
                temperature=classifier.temperature,
                confidence_map=classifier.confidence_map,
            ),
            task=classifier.task,
        ).eval()
        for parameter in module.parameters():
            parameter.requires_grad_(False)  # weights become constants of the graph
        side = self.image_size
        example = torch.zeros((example_batch, side, side, 3), dtype=torch.uint8, device=self.device)
        with torch.no_grad(), _tracing_autocast():
            self.module = torch.jit.trace(module, example, check_trace=False)

    def predict(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities ``(N, classes)`` of uint8 RGB ``images`` ``(N, H, W, 3)``."""
        outputs = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
                outputs.append(self.module(batch.to(self.device)).cpu().numpy())
        return np.concatenate(outputs) if outputs else np.empty((0, len(self.class_names)), np.float32)


def trace_predictor(predictor: CheckpointPredictor) -> CheckpointPredictor | TracedPredictor:
    """``predictor`` traced (see the module's notes), or itself if tracing fails or disagrees."""
    try:
        traced = TracedPredictor(predictor)
        probe = np.random.default_rng(0).integers(0, 256, (5, *[predictor.image_size] * 2, 3), np.uint8)
        difference = float(np.abs(traced.predict(probe) - predictor.predict(probe)).max())
    except Exception as error:  # a model TorchScript cannot trace still serves, only slower
        logger.warning("Serving the model untraced: tracing failed (%s: %s)", type(error).__name__, error)
        return predictor
    if difference > TOLERANCE:
        logger.warning("Serving the model untraced: the traced model differs by %.2g", difference)
        return predictor
    return traced


@contextlib.contextmanager
def _tracing_autocast() -> Iterator[None]:
    # TorchScript's own autocast pass would cast the already cast graph again, and fails on it;
    # off while tracing, the casts autocast performs are recorded as they happen instead.
    previous = torch._C._jit_set_autocast_mode(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)  # TorchScript's notice
            yield
    finally:
        torch._C._jit_set_autocast_mode(previous)
