"""Rules a data set must meet for one use, checked by the workflow that has that use.

Loading accepts a folder of one class (evaluating a model on it is fine); training does not.
"""

from __future__ import annotations

import torch

from cnnkit.data.dataset import ImageData
from cnnkit.data.errors import DataError


def check_trainable(data: ImageData, source: str = "The training data") -> None:
    """Raise ``DataError`` unless ``data`` has images of at least two classes.

    Args:
        data: the training images (before or after the validation split).
        source: how to name the data in the message, e.g. ``DataSplits.source``.
    """
    if data.multi_label:  # any number of labels an image: one label present is a task already
        if not bool((data.labels > 0).any()):
            raise DataError(f"{source} has no image with a label; training needs labelled images")
        return
    if len(data.class_names) < 2:
        names = ", ".join(data.class_names)
        raise DataError(
            f"{source} has {len(data.class_names)} class ({names}); training needs at least two class folders"
        )
    present = torch.unique(data.labels).tolist()
    if len(present) < 2:
        names = ", ".join(data.class_names[label] for label in present) or "none"
        raise DataError(
            f"{source} has images of {len(present)} of its {len(data.class_names)} classes "
            f"({names}); training needs images of at least two classes"
        )
