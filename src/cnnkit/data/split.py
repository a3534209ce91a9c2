"""Stratified, seeded train/validation splits."""

from __future__ import annotations

import math

import torch

from cnnkit.data.dataset import ImageData
from cnnkit.data.errors import DataError
from cnnkit.data.multilabel_split import iterative_split


def split_train_val(
    data: ImageData, validation_split: float, seed: int
) -> tuple[ImageData, ImageData | None]:
    """Split ``data`` into training and validation sets, class by class.

    Each class gives about ``validation_split`` of its images to validation; the per-class counts
    are rounded so that the validation set holds ``round(len(data) * validation_split)`` images
    in total, while keeping at least one training image per class whenever a class has any.
    Which images go where depends only on ``seed`` and the data; both sets keep the original
    order of ``data``.

    Returns:
        ``(train, val)``; ``val`` is ``None`` when ``validation_split`` is 0.

    Raises:
        ValueError: ``validation_split`` outside [0, 1) or ``seed`` not an integer.
        DataError: a class would be left without any training image.
    """
    _validate_arguments(validation_split, seed)
    if validation_split == 0:
        return data, None
    if data.multi_label:
        return _split_multi_label(data, validation_split, seed)
    class_indices = [torch.nonzero(data.labels == label).flatten() for label in range(len(data.class_names))]
    counts = [len(indices) for indices in class_indices]
    val_counts = _val_counts(counts, round(len(data) * validation_split))
    for name, count, val_count in zip(data.class_names, counts, val_counts, strict=True):
        if count - val_count < 1:
            raise DataError(
                f"Class '{name}' has {count} images: a validation split would leave it no "
                "training image; add images of it or remove its folder"
            )
    generator = torch.Generator().manual_seed(seed)
    train_parts, val_parts = [], []
    for indices, val_count in zip(class_indices, val_counts, strict=True):
        shuffled = indices[torch.randperm(len(indices), generator=generator)]
        val_parts.append(shuffled[:val_count])
        train_parts.append(shuffled[val_count:])
    train_indices = torch.sort(torch.cat(train_parts)).values
    val_indices = torch.sort(torch.cat(val_parts)).values
    if len(val_indices) == 0:
        if all(count <= 1 for count in counts):
            raise DataError(
                f"Every class has a single image, so none can be held out for validation "
                f"(validation_split={validation_split}); add images, or use validation_split=0 "
                "(--val-split 0)"
            )
        raise DataError(
            f"validation_split={validation_split} of {len(data)} images rounds to no validation image; "
            "use a larger validation_split, or 0 for no validation"
        )
    return data.subset(train_indices), data.subset(val_indices)


def _split_multi_label(data: ImageData, validation_split: float, seed: int) -> tuple[ImageData, ImageData]:
    """Multi-hot data: iterative stratification keeps every label in both parts, in proportion."""
    train, validation = iterative_split(data.labels.numpy(), validation_split, seed)
    if len(validation) == 0 or len(train) == 0:
        raise DataError(
            f"validation_split={validation_split} of {len(data)} images leaves a part empty; "
            "use another validation_split, or 0 for no validation"
        )
    return data.subset(torch.from_numpy(train)), data.subset(torch.from_numpy(validation))


def classes_without_validation(train: ImageData, val: ImageData | None) -> list[str]:
    """Classes of ``train`` that the validation split holds no image of (too few images to spare one)."""
    if val is None:
        return []
    if train.multi_label:
        validated, trained = val.labels.sum(0) > 0, train.labels.sum(0) > 0
        return [
            name
            for name, seen, held in zip(train.class_names, trained, validated, strict=True)
            if seen and not held
        ]
    validated = set(val.labels.unique().tolist())
    trained = sorted(set(train.labels.unique().tolist()))
    return [train.class_names[label] for label in trained if label not in validated]


def _validate_arguments(validation_split: float, seed: int) -> None:
    if (
        isinstance(validation_split, bool)
        or not isinstance(validation_split, int | float)
        or not (0 <= validation_split < 1)
    ):
        raise ValueError(
            f"validation_split must be in [0, 1). Received: validation_split={validation_split!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer. Received: seed={seed!r}")


def _val_counts(counts: list[int], total: int) -> list[int]:
    """Share ``total`` validation images among classes in proportion to ``counts``.

    Largest-remainder rounding: each class gets the floor of its exact share, then the
    classes with the largest fractional parts get one more until ``total`` is reached. A class
    never gives away its last image, so the total falls short only when nothing else fits.
    """
    size = sum(counts)
    exact = [count * total / size for count in counts]
    capacity = [max(count - 1, 0) for count in counts]
    shares = [min(math.floor(value), limit) for value, limit in zip(exact, capacity, strict=True)]
    # Ties go to the lower class index, so the result is fully deterministic.
    order = sorted(range(len(counts)), key=lambda index: (shares[index] - exact[index], index))
    missing = total - sum(shares)
    while missing > 0:
        progressed = False
        for index in order:
            if missing > 0 and shares[index] < capacity[index]:
                shares[index] += 1
                missing -= 1
                progressed = True
        if not progressed:
            break
    return shares
