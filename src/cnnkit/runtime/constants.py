"""The names a trained model runs by, defined once and torch-free.

The ONNX path (``inference.onnx_runtime``, the service of an ``.onnx`` file) and the command
line never import torch, and the torch side (``runtime.normalization``, ``runtime.device``,
``export``) uses the same values: both import them from here rather than keep copies.
"""

from __future__ import annotations

import os

UINT8_NHWC = "uint8-nhwc-rgb"  # pixels as decoded: (N, H, W, 3), 0-255
FLOAT_NCHW = "float-nchw-rgb"  # (N, 3, H, W) in [0, 1]
PIXEL_FORMATS = (UINT8_NHWC, FLOAT_NCHW)

TTA_LEVELS = (0, 1, 2)  # test-time augmentation: the image; and its mirror; and two shifts
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ONNX_SUFFIX = ".onnx"  # how a model file is told from a checkpoint


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity, e.g. taskset or containers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
