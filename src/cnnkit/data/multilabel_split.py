"""A seeded train/validation split of multi-label data that keeps every label represented:
iterative stratification (Sechidis, Tsoumakas and Vlahavas, ECML PKDD 2011).

Labels are placed rarest first: each image holding the rarest label still unplaced goes to the
split that most lacks that label (then the one that most lacks images; then a seeded draw), and
its other labels count as placed there too. Images without labels fill what the splits lack last.
Torch-free (numpy).
"""

from __future__ import annotations

import numpy as np


def iterative_split(labels: np.ndarray, validation_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of a multi-hot ``labels`` matrix ``(images, labels)``,
    each sorted; about ``validation_split`` of the images and of each label's go to validation."""
    if not 0 < validation_split < 1:
        raise ValueError(
            f"validation_split must be in (0, 1). Received: validation_split={validation_split!r}"
        )
    labels = np.asarray(labels, dtype=bool)
    count = len(labels)
    generator = np.random.default_rng(seed)
    shares = np.array([1 - validation_split, validation_split])
    wanted_images = shares * count
    wanted_labels = np.outer(shares, labels.sum(0)).astype(float)  # (2 splits, labels)
    unplaced_labels = labels.sum(0).astype(np.int64)
    split_of = np.full(count, -1)
    order = generator.permutation(count)  # the order ties are met in

    def place(row: int, need: np.ndarray) -> None:
        best = np.flatnonzero(need == need.max())
        if len(best) > 1:  # equally short of this label: the split shorter of images
            best = best[wanted_images[best] == wanted_images[best].max()]
        chosen = best[0] if len(best) == 1 else generator.choice(best)
        split_of[row] = chosen
        wanted_images[chosen] -= 1
        wanted_labels[chosen] -= labels[row]
        unplaced_labels[:] -= labels[row]

    while (unplaced_labels > 0).any():
        active = np.flatnonzero(unplaced_labels > 0)
        rarest = active[np.argmin(unplaced_labels[active])]
        for row in order[(split_of[order] < 0) & labels[order, rarest]]:
            place(row, wanted_labels[:, rarest])
    for row in order[split_of[order] < 0]:  # images with no label
        place(row, wanted_images.copy())
    return np.flatnonzero(split_of == 0), np.flatnonzero(split_of == 1)
