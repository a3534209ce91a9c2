"""Exact and near duplicate images, grouped by what they share: a class, a conflict, a leak.

Exact duplicates have the same decoded pixels. Near duplicates have perceptual hashes (pHash)
within ``near_distance`` bits and detail hashes within ``detail_distance`` bits (see
``hashing.py``). A group is a connected component of such pairs; it says whether its members
share a label (within class), disagree (across classes: a label conflict) or lie in different
splits (across splits: a leak that inflates the test score). Torch-free: NumPy and Pillow only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnkit.audit.hashing import (
    Fingerprints,
    connected_components,
    detail_distances,
    fingerprints,
    hamming_distances,
    near_pairs,
)

WITHIN_CLASS = "within class"
ACROSS_CLASSES = "across classes"
ACROSS_SPLITS = "across splits"

# When two images are near duplicates, measured on the 50,000 CIFAR-10 training images of
# /work/shared/data/cifar10-jpeg-train.zip (32 x 32 JPEGs; no two share pixels): pairs of the
# 1.25e9 found, how many of them join different classes, and the share of 2,000 altered copies
# found again (JPEG q75 / q50, resized to 28 and 64 px and brightness +20 score 99.6-100 % in
# every row, so only the hard alterations are listed):
#   pHash <=   detail <=   pairs   across classes   1-px shift   3-degree rotation
#      4           -          271          5             16 %          10 %
#      6           -          590         16             45 %          26 %
#      8           -        1,300        138             75 %          50 %
#     10           -        3,803      1,118             92 %          71 %
#      6          64          453          0             39 %          26 %
#     10          64          757          1             74 %          66 %   <- the defaults
#     10          72          974          5             91 %          70 %
# CIFAR-10 holds many true near copies (the same photo re-cropped or re-tinted; Barz & Denzler,
# "Do we train on test data?", 2020): by eye ~90 % of 40 random pHash pairs at distance 6 are
# real and ~55 % at 8, while the across-class pairs are nearly all false (a small plane, bird or
# ship on a plain background). The detail hash (16 x 16 DCT) tells those apart: at the defaults
# ~94 % of 48 random pairs looked real and 1 pair crossed classes, against 16 (all false) for
# pHash <= 6 alone, and 1-px shifts (3 % of a 32-px image) are found 74 % of the time. Shifts of
# larger images are found (tests/test_audit_core.py). pHash distances are nearly always even: the
# median splits 64 coefficients 32 / 32. Fingerprints and grouping take ~1.7 s for 50,000 images.
DEFAULT_NEAR_DISTANCE = 10
DEFAULT_DETAIL_DISTANCE = 64


@dataclass
class DuplicateMember:
    """One image of a group: where it is, its split, its label(s) and how far its hash lies."""

    index: int
    name: str
    split: str
    label: int | tuple[int, ...]
    digest: str  # equal digests: identical pixels
    distance: int  # bits of its pHash that differ from the group's first member's (of 64)
    detail_distance: int  # the same for the detail hash (of 256)

    def to_dict(self) -> dict[str, Any]:
        label = list(self.label) if isinstance(self.label, tuple) else self.label
        return {
            "index": self.index,
            "name": self.name,
            "split": self.split,
            "label": label,
            "digest": self.digest,
            "distance": self.distance,
            "detail_distance": self.detail_distance,
        }


@dataclass
class DuplicateGroup:
    """Two or more images that are the same picture.

    ``kind`` is ``"exact"`` when all members have identical pixels, else ``"near"`` (some only look
    alike; members with equal ``digest`` are still identical). ``across_classes``: the members'
    labels (label sets, multi-label) differ. ``across_splits``: members lie in different splits.
    """

    kind: str
    across_classes: bool
    across_splits: bool
    members: list[DuplicateMember] = field(default_factory=list)

    @property
    def relations(self) -> list[str]:
        """``"within class"`` or ``"across classes"``, then ``"across splits"`` when it applies."""
        first = ACROSS_CLASSES if self.across_classes else WITHIN_CLASS
        return [first, ACROSS_SPLITS] if self.across_splits else [first]

    @property
    def indices(self) -> list[int]:
        return [member.index for member in self.members]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "relations": self.relations,
            "across_classes": self.across_classes,
            "across_splits": self.across_splits,
            "members": [member.to_dict() for member in self.members],
        }


def _label_values(labels: Any, count: int) -> list[int | tuple[int, ...]]:
    """Class indices (N,), or multi-hot rows (N, L) as tuples of the labels set."""
    array = np.asarray(labels)
    if len(array) != count or array.ndim not in (1, 2):
        raise ValueError(f"labels must be (N,) or (N, labels) with N={count}. Received: shape={array.shape}")
    if array.ndim == 2:
        return [tuple(int(label) for label in np.flatnonzero(row)) for row in array]
    return [int(label) for label in array]


def _group(members: np.ndarray, prints: Fingerprints, context: tuple[list, list, list]) -> DuplicateGroup:
    """One ``DuplicateGroup`` of the images at ``members`` (ascending indices)."""
    labels, splits, names = context
    distances = hamming_distances(prints.hashes[members], prints.hashes[members[0]])
    details = detail_distances(prints.details[members], prints.details[members[0]])
    digests = [prints.digests[index] for index in members]
    return DuplicateGroup(
        kind="exact" if len(set(digests)) == 1 else "near",
        across_classes=len({labels[index] for index in members}) > 1,
        across_splits=len({splits[index] for index in members}) > 1,
        members=[
            DuplicateMember(
                index=int(index),
                name=names[index],
                split=splits[index],
                label=labels[index],
                digest=digests[number],
                distance=int(distances[number]),
                detail_distance=int(details[number]),
            )
            for number, index in enumerate(members)
        ],
    )


def _components(prints: Fingerprints, near_distance: int | None, detail_distance: int) -> np.ndarray:
    """Each image's group: by identical pixels, then joined by near pairs that pass both hashes."""
    _, first, by_digest = np.unique(
        np.asarray(prints.digests, dtype=str), return_index=True, return_inverse=True
    )
    if near_distance is None:
        return by_digest
    # Search among distinct pixel contents only: a thousand copies of one image are one node.
    pairs = near_pairs(prints.hashes[first], near_distance)
    close = detail_distances(prints.details[first[pairs[:, 0]]], prints.details[first[pairs[:, 1]]])
    return connected_components(len(first), pairs[close <= detail_distance])[by_digest]


def group_duplicates(
    prints: Fingerprints,
    labels: Any,
    splits: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    *,
    near_distance: int | None = DEFAULT_NEAR_DISTANCE,
    detail_distance: int = DEFAULT_DETAIL_DISTANCE,
) -> list[DuplicateGroup]:
    """Duplicate groups from precomputed ``fingerprints`` (``Fingerprints.join`` of batches).

    For callers that fingerprint a large store batch by batch (with progress) and group once.
    See ``find_duplicates`` for the arguments and the order of the groups.
    """
    count = len(prints)
    splits = ["train"] * count if splits is None else [str(split) for split in splits]
    names = [str(index) for index in range(count)] if names is None else [str(name) for name in names]
    if not len(splits) == len(names) == count:
        raise ValueError(
            f"splits and names must have one entry an image ({count}). Received: {len(splits)}, {len(names)}"
        )
    context = (_label_values(labels, count), splits, names)
    component = _components(prints, near_distance, detail_distance)
    order = np.argsort(component, kind="stable")
    bounds = np.flatnonzero(np.diff(component[order])) + 1
    groups = [_group(members, prints, context) for members in np.split(order, bounds) if len(members) > 1]
    # Leaks first, then label conflicts, exact before near, larger first, then by first image.
    groups.sort(
        key=lambda g: (
            not g.across_splits,
            not g.across_classes,
            g.kind != "exact",
            -len(g.members),
            g.indices[0],
        )
    )
    return groups


def find_duplicates(
    images: Any,
    labels: Any,
    splits: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    *,
    near_distance: int | None = DEFAULT_NEAR_DISTANCE,
    detail_distance: int = DEFAULT_DETAIL_DISTANCE,
) -> list[DuplicateGroup]:
    """Groups of two or more images that are exact or near duplicates.

    ``images``: uint8 (N, H, W, 3) (array, CPU tensor, ``StoredImages``: read once, a batch at a
    time) or a list of (H, W, 3) arrays of any sizes; ``labels``: class indices (N,) or multi-hot
    rows (N, L), compared as label sets; ``splits``: each image's split ("train", "validation",
    "test"; default all "train"); ``names``: each image's file name (default its index).
    A near pair has pHashes within ``near_distance`` bits (0-11) and detail hashes within
    ``detail_distance`` (of 256); the defaults and their measurements are above. ``None`` finds
    exact duplicates only. Groups are connected components, so near pairs chain (A ~ B ~ C is
    one group even when A and C lie farther apart). Ordered: across splits first, then across
    classes, exact before near, larger first; members by index.
    """
    return group_duplicates(
        fingerprints(images),
        labels,
        splits,
        names,
        near_distance=near_distance,
        detail_distance=detail_distance,
    )
