"""Stratified seeded train/validation splits, and ImageData itself."""

from __future__ import annotations

import pytest
import torch

from cnnkit.data import DataError, ImageData, classes_without_validation, split_train_val


def make_data(counts: list[int], shuffle: bool = False) -> ImageData:
    labels = torch.cat([torch.full((count,), label) for label, count in enumerate(counts)])
    if shuffle:
        labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(7))]
    # Each image holds its own index in its first pixel, to track where it went.
    images = torch.zeros((len(labels), 2, 2, 3), dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(len(labels)) % 256
    images[:, 0, 0, 1] = torch.arange(len(labels)) // 256
    return ImageData(images, labels.to(torch.int64), [f"class{i}" for i in range(len(counts))])


def original_indices(data: ImageData) -> list[int]:
    return (data.images[:, 0, 0, 0].long() + 256 * data.images[:, 0, 0, 1].long()).tolist()


def test_class_proportions_are_preserved():
    train, val = split_train_val(make_data([50, 30, 20], shuffle=True), 0.2, seed=0)
    assert torch.bincount(val.labels).tolist() == [10, 6, 4]
    assert torch.bincount(train.labels).tolist() == [40, 24, 16]


@pytest.mark.parametrize(("counts", "fraction"), [([7, 7, 7], 0.5), ([13, 5, 9, 1], 0.3), ([3, 3, 4], 0.15)])
def test_total_is_rounded_and_sets_partition_the_data(counts, fraction):
    data = make_data(counts, shuffle=True)
    train, val = split_train_val(data, fraction, seed=3)
    assert len(val) == round(len(data) * fraction)
    assert sorted(original_indices(train) + original_indices(val)) == list(range(len(data)))
    assert (torch.bincount(train.labels, minlength=len(counts)) >= 1).all()
    # Both subsets keep the original order.
    assert original_indices(val) == sorted(original_indices(val))


def test_every_class_keeps_a_training_image():
    train, val = split_train_val(make_data([1, 10]), 0.5, seed=0)
    assert torch.bincount(train.labels).tolist()[0] == 1
    assert len(val) == round(11 * 0.5)


def test_same_seed_same_split_other_seed_other_split():
    data = make_data([40, 40])
    first = original_indices(split_train_val(data, 0.25, seed=5)[1])
    again = original_indices(split_train_val(data, 0.25, seed=5)[1])
    other = original_indices(split_train_val(data, 0.25, seed=6)[1])
    assert first == again
    assert first != other


def test_sorted_by_class_data_gives_every_class_to_validation():
    train, val = split_train_val(make_data([100] * 10), 0.1, seed=0)
    assert torch.bincount(val.labels).tolist() == [10] * 10
    assert val.class_names == train.class_names


def test_zero_fraction_returns_the_data_unchanged():
    data = make_data([3, 3])
    train, val = split_train_val(data, 0.0, seed=0)
    assert train is data and val is None


@pytest.mark.parametrize("fraction", [1.0, 1.5, -0.1, "0.2", True])
def test_invalid_fraction_is_named(fraction):
    with pytest.raises(
        ValueError, match=r"validation_split must be in \[0, 1\). Received: validation_split="
    ):
        split_train_val(make_data([3, 3]), fraction, seed=0)


def test_class_without_images_is_named():
    with pytest.raises(DataError, match="Class 'class1' has 0 images"):
        split_train_val(make_data([5, 0, 5]), 0.2, seed=0)


def test_image_data_validates_and_subsets():
    data = make_data([2, 2])
    part = data.subset(torch.tensor([3, 0]))
    assert original_indices(part) == [3, 0] and part.labels.tolist() == [1, 0]
    assert len(part) == 2
    with pytest.raises(ValueError, match="images must be a uint8 tensor"):
        ImageData(data.images.float(), data.labels, data.class_names)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        ImageData(data.images, data.labels + 1, data.class_names)


def test_fraction_too_small_for_any_validation_image_is_an_error():
    with pytest.raises(DataError, match="rounds to no validation image; use a larger validation_split"):
        split_train_val(make_data([3, 3]), 0.01, seed=0)


def test_single_image_classes_get_the_right_advice_and_are_named():
    # One image a class: no fraction can help, so the message must not ask for a larger one.
    with pytest.raises(DataError, match="Every class has a single image") as caught:
        split_train_val(make_data([1, 1, 1]), 0.5, seed=0)
    assert "larger" not in str(caught.value) and "--val-split 0" in str(caught.value)
    # A one-image class among bigger ones trains but gets no validation image: it is named.
    train, val = split_train_val(make_data([1, 10, 10]), 0.2, seed=0)
    assert classes_without_validation(train, val) == [train.class_names[0]]
    assert classes_without_validation(*split_train_val(make_data([5, 5]), 0.2, seed=0)) == []
