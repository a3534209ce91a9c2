"""Every figure names the data it was measured on: training, validation or test.

The history keeps Keras's column names (``loss``, ``val_accuracy``); what a checkpoint, a report
or the service shows is grouped by split instead, so that a training figure can never pass for
a validation one.
"""

from __future__ import annotations

from typing import Any

SPLITS = ("train", "validation", "test")
# Keras-style history keys: the validation prefix, and the per-epoch columns that are no metric.
_PREFIXES = {"val_": "validation", "test_": "test"}
_NOT_METRICS = {"epoch", "seconds", "ms_per_sample"}


def metrics_by_split(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{"loss": .., "val_accuracy": ..}`` -> ``{"train": {"loss": ..}, "validation": {"accuracy": ..}}``.

    Already grouped metrics (any key a split name) come back as they are, so this reads both the
    flat metrics older checkpoints hold and the grouped ones of newer ones.
    """
    if any(key in SPLITS for key in metrics):
        return {
            key: dict(value) for key, value in metrics.items() if key in SPLITS and isinstance(value, dict)
        }
    grouped: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key in _NOT_METRICS:
            continue
        split, name = "train", key
        for prefix, prefixed_split in _PREFIXES.items():
            if key.startswith(prefix):
                split, name = prefixed_split, key.removeprefix(prefix)
        grouped.setdefault(split, {})[name] = value
    return grouped
