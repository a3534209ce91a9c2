"""The data audit's core: duplicate images and confident-learning label issues (cnnkit.audit)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnkit.audit import (
    ACROSS_CLASSES,
    ACROSS_SPLITS,
    DEFAULT_NEAR_DISTANCE,
    FILTERS,
    WITHIN_CLASS,
    Fingerprints,
    confident_joint,
    connected_components,
    estimated_error_count,
    find_duplicates,
    find_label_issues,
    find_outliers,
    fingerprints,
    group_duplicates,
    hamming_distances,
    near_pairs,
    perceptual_hashes,
    pixel_digests,
)

CIFAR_ZIP = Path("/work/shared/data/cifar10-jpeg-train.zip")


def smooth_images(count: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Distinct photo-like images: random 8 x 8 colour fields enlarged with a bicubic filter."""
    coarse = np.random.default_rng(seed).integers(0, 256, (count, 8, 8, 3), dtype=np.uint8)
    resample = Image.Resampling.BICUBIC
    return np.stack([np.asarray(Image.fromarray(c).resize((size, size), resample)) for c in coarse])


def jpeg_copy(image: np.ndarray, quality: int = 75) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def shifted_right(images: np.ndarray) -> np.ndarray:
    """Every image moved one pixel to the right, its left column repeated."""
    return np.pad(images, ((0, 0), (0, 0), (1, 0), (0, 0)), mode="edge")[:, :, : images.shape[2]]


def pattern(height: int, width: int, k: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    red = (127 + 120 * np.sin(x / (3 + k) + y / 7)).astype(np.uint8)
    green = ((x * 255) // (width - 1)).astype(np.uint8)
    blue = (((x // (4 + k)) + (y // 5)) % 2 * 200 + 20).astype(np.uint8)
    return np.stack([red, green, blue], axis=-1)


def cifar_images(every: int = 1, names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every ``every``-th image of the shared CIFAR-10 zip (or those ``names``), with its class."""
    if not CIFAR_ZIP.exists():
        pytest.skip(f"{CIFAR_ZIP} is missing")
    with zipfile.ZipFile(CIFAR_ZIP) as archive:
        everything = sorted(name for name in archive.namelist() if name.endswith(".jpg"))
        names = everything[::every] if names is None else names
        images = [np.asarray(Image.open(io.BytesIO(archive.read(n))).convert("RGB")) for n in names]
    classes = sorted({name.split("/")[1] for name in everything})
    return np.stack(images), np.array([classes.index(name.split("/")[1]) for name in names])


def test_the_audit_imports_neither_torch_nor_cleanlab():
    code = "import sys, cnnkit.audit; assert not {'torch', 'cleanlab', 'scipy'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- duplicates -------------------------------------------------------------------------------


def test_pixel_digests_see_pixels_and_shape():
    images = smooth_images(3)
    changed = images.copy()
    changed[1, 5, 5, 0] ^= 1
    digests = pixel_digests(np.concatenate([images, images[:1], changed[1:2]]))
    assert digests[0] == digests[3] and len(set(digests)) == 4
    flat = np.zeros((1, 4, 4, 3), np.uint8)
    assert pixel_digests(flat) != pixel_digests(flat.reshape(1, 2, 8, 3))  # same bytes, other shape
    with pytest.raises(ValueError, match="uint8"):
        pixel_digests(images.astype(np.float32))
    whole, parts = fingerprints(images), [fingerprints(images[:1]), fingerprints(images[1:])]
    joined = Fingerprints.join(parts)
    assert joined.digests == whole.digests == digests[:3] and len(joined) == 3
    assert np.array_equal(joined.hashes, whole.hashes) and np.array_equal(joined.details, whole.details)
    assert whole.details.shape == (3, 4) and whole.details.dtype == np.uint64


def test_perceptual_hash_is_imagehash_phash_bit_for_bit():
    # str(imagehash.phash(Image.fromarray(pattern(...)))) from ImageHash 4.3.2, Pillow 13.
    expected = ["8af0a40ea6aaa2ff", "a25af0a44ea6eeaa", "a8f8500500fff7e5"]
    images = [pattern(32, 32, 0), pattern(48, 40, 1), pattern(24, 64, 2)]
    assert [f"{int(h):016x}" for h in perceptual_hashes(images)] == expected
    assert perceptual_hashes(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0,)


def test_exact_duplicates_are_grouped_by_relation():
    images = smooth_images(12)
    labels = np.arange(12) % 3
    splits = ["train"] * 12
    names = [f"img{i}.png" for i in range(12)]
    # 0 -> 8: same class, same split; 1 -> 9: other class; 2 -> 10: test split; 3 -> 11: both.
    images[8:12] = images[0:4]
    labels[8:12] = [labels[0], (labels[1] + 1) % 3, labels[2], (labels[3] + 1) % 3]
    splits[10] = "test"
    splits[11] = "validation"
    groups = find_duplicates(images, labels, splits, names)

    assert [g.indices for g in groups] == [[3, 11], [2, 10], [1, 9], [0, 8]]
    assert [g.relations for g in groups] == [
        [ACROSS_CLASSES, ACROSS_SPLITS],
        [WITHIN_CLASS, ACROSS_SPLITS],
        [ACROSS_CLASSES],
        [WITHIN_CLASS],
    ]
    assert all(g.kind == "exact" for g in groups)
    member = groups[1].members[1]
    assert (member.index, member.name, member.split, member.label) == (10, "img10.png", "test", labels[2])
    assert member.distance == member.detail_distance == 0
    assert json.loads(json.dumps([g.to_dict() for g in groups]))[0]["relations"] == [
        "across classes",
        "across splits",
    ]
    exact_only = find_duplicates(images, labels, splits, names, near_distance=None)
    assert [g.indices for g in exact_only] == [g.indices for g in groups]


def test_multi_label_rows_compare_label_sets():
    images = smooth_images(4)
    images[2], images[3] = images[0], images[1]
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1], [0, 1, 1]])
    groups = find_duplicates(images, labels)
    by_first = {g.indices[0]: g for g in groups}
    assert not by_first[0].across_classes and by_first[0].members[0].label == (0, 2)
    assert by_first[1].across_classes
    assert by_first[1].to_dict()["members"][1]["label"] == [1, 2]


def test_near_duplicates_jpeg_resize_and_shift_are_found():
    count = 20
    small = smooth_images(count, seed=1)
    large = smooth_images(count, size=96, seed=2)
    resample = Image.Resampling.BICUBIC
    copies = {
        "jpeg": [jpeg_copy(image) for image in small],
        "resized": [np.asarray(Image.fromarray(image).resize((40, 40), resample)) for image in small],
        "shifted": list(shifted_right(large)),
    }
    for kind, altered in copies.items():
        originals = large if kind == "shifted" else small
        images = list(originals) + altered  # a list: the resized copies have another size
        groups = find_duplicates(images, np.zeros(2 * count, int))
        pairs = sorted(g.indices for g in groups)
        assert pairs == [[i, i + count] for i in range(count)], kind
        assert all(g.kind == "near" and g.members[1].distance <= DEFAULT_NEAR_DISTANCE for g in groups)
    # The shift is the hardest: a third of its copies lie 4-6 bits away, so it tests the distance.
    strict = find_duplicates(list(large) + copies["shifted"], np.zeros(2 * count, int), near_distance=2)
    assert len(strict) < 16


def test_distinct_cifar_images_rarely_match_and_their_copies_do():
    images, labels = cifar_images(every=100)  # 500 images, 50 a class
    assert len(images) == 500
    groups = find_duplicates(images, labels)
    assert len(groups) <= 1, [g.to_dict() for g in groups]  # measured: none
    copies = np.stack([jpeg_copy(image) for image in images[:100]])
    moved = shifted_right(np.stack([np.asarray(Image.fromarray(i).resize((128, 128))) for i in images[:50]]))
    enlarged = [np.asarray(Image.fromarray(i).resize((128, 128))) for i in images[:50]]
    every = list(images) + list(copies) + enlarged + list(moved)
    splits = ["train"] * 500 + ["test"] * 200
    groups = find_duplicates(every, np.concatenate([labels, labels[:100], labels[:50], labels[:50]]), splits)
    leaks = [g for g in groups if g.across_splits]
    assert {i for g in leaks for i in g.indices} >= set(range(100)) | set(range(500, 700))
    assert all(not g.across_classes for g in leaks)


def test_the_detail_hash_rejects_look_alikes_across_classes():
    # pHash pairs within 6 bits, found in the 50,000: a small plane against a ship or a bird.
    names = ["airplane/0520", "ship/1168", "airplane/0547", "bird/2365", "airplane/3306", "ship/3954"]
    images, labels = cifar_images(names=[f"train/{name}.jpg" for name in names])
    by_phash = find_duplicates(images, labels, near_distance=6, detail_distance=256)
    assert sorted(g.indices for g in by_phash) == [[0, 1], [2, 3], [4, 5]]
    assert all(g.across_classes and g.members[1].detail_distance > 64 for g in by_phash)
    assert find_duplicates(images, labels) == []


def test_near_pairs_equals_brute_force():
    generator = np.random.default_rng(3)
    base = generator.integers(0, 2**63, 3000, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    variants = base[:400].copy()
    for row, flips in enumerate(generator.integers(0, 12, 400)):
        for bit in generator.choice(64, flips, replace=False):
            variants[row] ^= np.uint64(1) << np.uint64(bit)
    hashes = np.concatenate([base, variants])
    distances = hamming_distances(hashes[:, None], hashes[None, :])
    for distance in (0, 3, 6, 11):
        left, right = np.nonzero(np.triu(distances <= distance, k=1))
        assert np.array_equal(near_pairs(hashes, distance), np.stack([left, right], axis=1)), distance
    with pytest.raises(ValueError, match="between 0 and 11"):
        near_pairs(hashes, 12)


def test_connected_components_follow_chains():
    pairs = np.array([[5, 6], [1, 2], [6, 7], [2, 3], [9, 7]])
    assert connected_components(10, pairs).tolist() == [0, 1, 1, 1, 4, 5, 5, 5, 8, 5]
    assert connected_components(3, np.zeros((0, 2), int)).tolist() == [0, 1, 2]


def test_hashing_and_near_search_of_20000_images_is_fast():
    images = smooth_images(20_000, seed=4)
    images[19_000:] = images[:1000]  # 1,000 exact copies to group
    started = time.perf_counter()
    groups = group_duplicates(fingerprints(images), np.zeros(20_000, int))
    elapsed = time.perf_counter() - started
    assert len(groups) == 1000 and all(g.kind == "exact" for g in groups)
    assert elapsed < 5.0, f"{elapsed:.2f} s"  # 0.5 s on 2 idle cores; room for a busy machine


# --- label issues -----------------------------------------------------------------------------


def noisy_problem(seed: int, count: int = 2000, classes: int = 5, strength: float = 5.0):
    """Out-of-sample-like probabilities from the true classes, and labels with ~10 % flipped."""
    generator = np.random.default_rng(seed)
    true = generator.integers(0, classes, count)
    logits = generator.normal(0, 1, (count, classes))
    logits[np.arange(count), true] += strength * generator.uniform(0.3, 1.5, count)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    flipped = generator.random(count) < 0.1
    labels = true.copy()
    labels[flipped] = (true[flipped] + generator.integers(1, classes, flipped.sum())) % classes
    return labels, probabilities, flipped


def test_label_issues_find_planted_flips():
    labels, probabilities, flipped = noisy_problem(seed=0)
    result = find_label_issues(labels, probabilities)
    found = set(result.indices.tolist())
    planted = set(np.flatnonzero(flipped).tolist())
    precision, recall = len(found & planted) / len(found), len(found & planted) / len(planted)
    # The default list is the surer one; pruning by the calibrated joint finds more, less surely.
    assert precision >= 0.95 and recall >= 0.75, (precision, recall)
    pruned = set(find_label_issues(labels, probabilities, filter_by="prune_by_noise_rate").indices.tolist())
    precision, recall = len(pruned & planted) / len(pruned), len(pruned & planted) / len(planted)
    assert precision >= 0.8 and recall >= 0.85, (precision, recall)
    confidences = [issue.self_confidence for issue in result.issues]
    assert confidences == sorted(confidences)
    issue = result.issues[0]
    assert issue.self_confidence == probabilities[issue.index, labels[issue.index]]
    assert issue.suggested_label == probabilities[issue.index].argmax() != issue.given_label
    assert result.self_confidence.shape == (2000,)
    assert result.confident_joint.sum(axis=1).tolist() == np.bincount(labels).tolist()
    assert json.loads(json.dumps(result.to_dict()))["count"] == len(found)


def test_label_issues_hand_computed():
    # Thresholds: class 0 = (0.9 + 0.8 + 0.2) / 3 = 0.633, class 1 = (0.9 + 0.7 + 0.7) / 3 = 0.767.
    # Image 2 (labelled 0) is confidently class 1, so C = [[2, 1], [0, 3]]: one image labelled 0
    # is flagged, the one with the largest p1 - p0: image 2. Image 4 (labelled 1, p1 = 0.7) is
    # below class 1's threshold but still most likely 1: not an issue.
    labels = [0, 0, 0, 1, 1, 1]
    probabilities = [[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.3, 0.7]]
    assert confident_joint(labels, probabilities).tolist() == [[2, 1], [0, 3]]
    result = find_label_issues(labels, probabilities)
    assert result.indices.tolist() == [2]
    assert (result.issues[0].given_label, result.issues[0].suggested_label) == (0, 1)
    with pytest.raises(ValueError, match="class indices"):
        find_label_issues([0.0, 1.0], [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match=r"lie in 0\.\.1"):
        find_label_issues([0, 2], [[0.5, 0.5], [0.5, 0.5]])


def test_label_issues_agree_with_cleanlab():
    filters = pytest.importorskip("cleanlab.filter")
    count_module = pytest.importorskip("cleanlab.count")
    problems = [
        noisy_problem(seed, count, classes, 3.0)
        for seed in range(4)
        for count, classes in ((2000, 5), (1500, 10))
    ]
    # Two where a calibrated row holds two equal halves (18.48, 354.48): the rounding must tip alike.
    problems += [noisy_problem(25, 2000, 5, 2.5), noisy_problem(6, 3000, 10, 4.0)]
    # A class nobody is labelled with (5) and a class of one image (4).
    labels, probabilities, flipped = noisy_problem(7, 1500, 6, 3.0)
    labels[(labels == 5) | (labels == 4)] = 0
    labels[0] = 4
    problems.append((labels, probabilities, flipped))
    for number, (labels, probabilities, _) in enumerate(problems):
        for filter_by in FILTERS:
            ours = find_label_issues(labels, probabilities, filter_by=filter_by)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs = filters.find_label_issues(labels, probabilities, filter_by=filter_by, n_jobs=1)
            if filter_by == "low_self_confidence":  # less those whose given label is the most probable
                theirs &= probabilities.argmax(axis=1) != labels
            assert set(ours.indices.tolist()) == set(np.flatnonzero(theirs).tolist()), (number, filter_by)
        expected_count = count_module.num_label_issues(
            labels, probabilities, estimation_method="off_diagonal"
        )
        assert estimated_error_count(labels, probabilities) == expected_count, number
        expected_joint = count_module.compute_confident_joint(labels, probabilities)
        assert np.array_equal(ours.confident_joint, expected_joint), number


def test_outliers_rank_images_no_class_claims_first():
    labels, probabilities, _ = noisy_problem(seed=5)
    planted = [7, 70, 700]
    probabilities[planted] = 1 / probabilities.shape[1]
    ranking = find_outliers(probabilities, labels)
    assert set(ranking.top(3).tolist()) == set(planted)
    assert ranking.scores.shape == (2000,) and ranking.scores.min() >= -1e-12
    outlier = pytest.importorskip("cleanlab.outlier")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = outlier.OutOfDistribution().fit_score(pred_probs=probabilities, labels=labels, verbose=False)
    np.testing.assert_allclose(ranking.scores, theirs, atol=1e-12)
