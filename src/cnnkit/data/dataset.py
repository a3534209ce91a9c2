"""Image data sets: uint8 images (a tensor in memory, or ``StoredImages`` read from a store on
disk as batches need them) and an int64 tensor of labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cnnkit.data.skipped import SkippedFile
from cnnkit.data.stored_images import StoredImages


@dataclass
class ImageData:
    """Images and labels.

    Attributes:
        images: uint8 tensor of shape (N, H, W, 3), contiguous, RGB; or, for a large data set,
            ``StoredImages``: the same shape, read from its store on disk as it is indexed.
        labels: int64 tensor of shape (N,), each in ``[0, len(class_names))``; or, for multi-label
            data (``multi_label``), a multi-hot int64 tensor (N, len(class_names)) of 0 and 1.
        class_names: class (label) name of each label index.
        names: each image's relative path in the folder or zip it was decoded from (for
            reports naming files), or ``None`` for sources without file names (CIFAR-10 arrays).
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    names: list[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor | StoredImages) or self.images.dtype != torch.uint8:
            raise ValueError(f"images must be a uint8 tensor. Received: images={_describe(self.images)}")
        if self.images.dim() != 4 or self.images.shape[-1] != 3:
            raise ValueError(
                f"images must have shape (N, H, W, 3). Received: shape={tuple(self.images.shape)}"
            )
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64:
            raise ValueError(f"labels must be an int64 tensor. Received: labels={_describe(self.labels)}")
        if self.labels.shape not in ((self.images.shape[0],), (self.images.shape[0], len(self.class_names))):
            raise ValueError(
                "labels must have shape (N,), or (N, classes) for multi-hot labels, matching images. "
                f"Received: labels.shape={tuple(self.labels.shape)}, "
                f"images.shape={tuple(self.images.shape)}, {len(self.class_names)} class names"
            )
        if not self.class_names:
            raise ValueError(f"class_names must not be empty. Received: {self.class_names!r}")
        if self.multi_label:
            if len(self.labels) and not bool(((self.labels == 0) | (self.labels == 1)).all()):
                raise ValueError("multi-hot labels must be 0 or 1. Received: other values")
        elif len(self.labels) and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)
        ):
            raise ValueError(
                f"labels must be in [0, {len(self.class_names)}). Received: "
                f"min={int(self.labels.min())}, max={int(self.labels.max())}"
            )
        if self.names is not None:
            if isinstance(self.names, str | bytes):
                raise ValueError(f"names must be a list of strings or None. Received: names={self.names!r}")
            self.names = list(self.names)
            if len(self.names) != len(self.labels):
                raise ValueError(
                    "names must hold one name per image or be None. "
                    f"Received: len(names)={len(self.names)}, images.shape={tuple(self.images.shape)}"
                )
        if isinstance(self.images, torch.Tensor):
            # Training code slices batches straight out of this tensor; contiguity keeps that cheap.
            self.images = self.images.contiguous()
        self.class_names = list(self.class_names)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def multi_label(self) -> bool:
        """Multi-hot labels: any number of ``class_names`` an image."""
        return self.labels.dim() == 2

    def subset(self, indices: torch.Tensor) -> ImageData:
        """Return a new ``ImageData`` holding the images at ``indices`` (a 1-D integer tensor).

        Images in memory are copied; stored images become a view of the same store (no pixels read).
        """
        if not isinstance(indices, torch.Tensor) or indices.dim() != 1:
            raise ValueError(f"indices must be a 1-D tensor. Received: indices={_describe(indices)}")
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise ValueError(f"indices must be an integer tensor. Received: dtype={indices.dtype}")
        indices = indices.to(torch.int64)
        names = None if self.names is None else [self.names[index] for index in indices.tolist()]
        stored = isinstance(self.images, StoredImages)
        images = self.images.subset(indices) if stored else self.images[indices]
        return ImageData(images, self.labels[indices], list(self.class_names), names)


@dataclass
class DataSplits:
    """The splits read from one source.

    Attributes:
        train: the training images.
        test: the test images, or ``None`` when the source has no test split.
        source: human description of where the data came from.
        skipped: the files of an image folder or zip that were not used, each with its reason
            (see ``write_skipped_list`` and ``skipped_summary``); empty for CIFAR-10.
        validation: the images of the source's own validation folder (``val/``, ``valid/`` or
            ``validation/``), or ``None`` (a validation split is then carved from ``train``).
        folders: for image folders, the folder each split came from, by split name.
    """

    train: ImageData
    test: ImageData | None
    source: str
    skipped: list[SkippedFile] = field(default_factory=list)
    validation: ImageData | None = None
    folders: dict[str, str] = field(default_factory=dict)

    @property
    def file_count(self) -> int:
        """How many files (or records) the source held: images loaded plus files skipped."""
        held_out = sum(len(split) for split in (self.test, self.validation) if split is not None)
        return len(self.train) + held_out + len(self.skipped)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor(dtype={value.dtype}, shape={tuple(value.shape)})"
    return type(value).__name__
