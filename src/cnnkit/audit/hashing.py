"""Image fingerprints for duplicate finding, and the search for near ones. Torch-free.

Each image gets three fingerprints in one pass: a BLAKE2b digest of its decoded pixels (equal:
identical pixels), its 64-bit DCT perceptual hash (pHash, bit for bit as the ``imagehash``
library's) and a 256-bit "detail" hash of the same DCT's 16 x 16 lowest frequencies. Near pairs
are found among the pHashes by a multi-index search, not by comparing all N^2 pairs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

# Both hashes are computed on a 32 x 32 grayscale copy (Lanczos); pHash keeps the 8 x 8 lowest DCT
# frequencies, the detail hash the 16 x 16 lowest (finer shapes: two planes on a plain sky share
# a pHash far more often than a detail hash).
_HASH_INPUT = 32
_HASH_SIDE = 8
_DETAIL_SIDE = 16
DETAIL_BITS = _DETAIL_SIDE * _DETAIL_SIDE
_BATCH = 2048

# The multi-index search splits hashes into 4 chunks of 16 bits: a pair within d bits has a chunk
# within d // 4 bits (pigeonhole); up to d = 11 that is at most 2 bits, 137 variants a chunk.
MAX_NEAR_DISTANCE = 11
_CHUNKS = 4
_CHUNK_BITS = 16
_CANDIDATE_LIMIT = 1 << 22  # candidate pairs expanded at once: bounds memory on degenerate data

# DCT-II basis (scipy.fftpack's, without its factor 2, which the median comparisons ignore): only
# the 16 lowest frequencies are needed, so the 2-D DCT is two small matrix products. The 8 x 8
# corner of the 16 x 16 result is exactly the 8 x 8 DCT pHash uses.
_DCT = np.cos(
    np.pi * np.arange(_DETAIL_SIDE)[:, None] * (2 * np.arange(_HASH_INPUT)[None, :] + 1) / (2 * _HASH_INPUT)
)


@dataclass
class Fingerprints:
    """What duplicate finding needs of each image: ``digests`` (N,) hex strings, ``hashes`` (N,)
    uint64 pHashes and ``details`` (N, 4) uint64 detail hashes (256 bits, most significant first).
    """

    digests: list[str]
    hashes: np.ndarray
    details: np.ndarray

    def __len__(self) -> int:
        return len(self.digests)

    @classmethod
    def join(cls, parts: Sequence[Fingerprints]) -> Fingerprints:
        """One ``Fingerprints`` of several batches' (a large store fingerprinted batch by batch)."""
        return cls(
            digests=[digest for part in parts for digest in part.digests],
            hashes=np.concatenate([np.zeros(0, np.uint64), *(part.hashes for part in parts)]),
            details=np.concatenate(
                [np.zeros((0, DETAIL_BITS // 64), np.uint64), *(p.details for p in parts)]
            ),
        )


def _batches(images: Any) -> Iterator[np.ndarray]:
    """uint8 (B, H, W, C) arrays of consecutive images.

    ``images``: an (N, H, W, C) array, a CPU tensor or ``StoredImages`` (sliced a batch at a time,
    so a large store is never read whole), or a list of (H, W, C) arrays of any sizes.
    """
    ragged = isinstance(images, list | tuple)
    for start in range(0, len(images), _BATCH):
        part = images[start : start + _BATCH]
        if ragged:
            shapes = {np.shape(image) for image in part}
            part = [np.asarray(image)[None] for image in part] if len(shapes) > 1 else [np.stack(part)]
        else:
            part = [np.asarray(part)]
        for batch in part:
            if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] not in (1, 3, 4):
                raise ValueError(
                    f"images must be uint8 (N, height, width, 3). Received: dtype={batch.dtype}, "
                    f"shape={batch.shape}"
                )
            yield batch


def _batch_digests(batch: np.ndarray) -> list[str]:
    shape = "x".join(str(side) for side in batch.shape[1:]).encode()
    digests = []
    for image in np.ascontiguousarray(batch):
        digest = hashlib.blake2b(shape, digest_size=16)
        digest.update(image.data)
        digests.append(digest.hexdigest())
    return digests


def _grayscale(batch: np.ndarray) -> np.ndarray:
    """Pillow's RGB -> "L" conversion (ITU-R 601-2 luma, its fixed-point rounding), vectorised."""
    if batch.shape[-1] == 1:
        return batch[..., 0]
    luma = batch[..., 0].astype(np.uint32) * 19595
    luma += batch[..., 1].astype(np.uint32) * 38470
    luma += batch[..., 2].astype(np.uint32) * 7471
    luma += 0x8000
    return (luma >> 16).astype(np.uint8)


def _low_frequencies(batch: np.ndarray) -> np.ndarray:
    """The 16 x 16 lowest DCT frequencies of each image's 32 x 32 grayscale copy: (B, 16, 16)."""
    gray = _grayscale(batch)
    if gray.shape[1:] != (_HASH_INPUT, _HASH_INPUT):
        size = (_HASH_INPUT, _HASH_INPUT)
        gray = np.stack([np.asarray(Image.fromarray(g).resize(size, Image.Resampling.LANCZOS)) for g in gray])
    count, side = len(gray), _DETAIL_SIDE
    # Along x, then along y: two (count * rows, 32) @ (32, 16) products instead of count small ones.
    low = gray.astype(np.float64).reshape(count * _HASH_INPUT, _HASH_INPUT) @ _DCT.T
    low = low.reshape(count, _HASH_INPUT, side).transpose(0, 2, 1)
    low = (low.reshape(count * side, _HASH_INPUT) @ _DCT.T).reshape(count, side, side)
    return low.transpose(0, 2, 1)  # [image, y frequency, x frequency]


def _bits_above_median(coefficients: np.ndarray) -> np.ndarray:
    """(B, 64 k) coefficients -> (B, k) uint64: bit = coefficient > the row's median, first = MSB."""
    bits = coefficients > np.median(coefficients, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64)


def _batch_fingerprints(batch: np.ndarray) -> Fingerprints:
    low = _low_frequencies(batch)
    count = len(low)
    hashes = _bits_above_median(low[:, :_HASH_SIDE, :_HASH_SIDE].reshape(count, -1))[:, 0]
    details = _bits_above_median(low.reshape(count, -1))
    return Fingerprints(_batch_digests(batch), hashes, details)


def fingerprints(images: Any) -> Fingerprints:
    """Digest, pHash and detail hash of every image, in one pass over ``images``.

    ``images``: uint8 (N, H, W, 3) (an array, a CPU tensor, ``StoredImages``: read a batch at a
    time) or a list of (H, W, 3) arrays of any sizes.
    """
    return Fingerprints.join([_batch_fingerprints(batch) for batch in _batches(images)])


def pixel_digests(images: Any) -> list[str]:
    """A BLAKE2b digest (32 hex digits) of each image's shape and decoded pixels.

    Equal digests mean identical pixels: two files that decode alike (a PNG and its lossless
    copy, one photo under two names) are exact duplicates whatever their bytes on disk.
    """
    return [digest for batch in _batches(images) for digest in _batch_digests(batch)]


def perceptual_hashes(images: Any) -> np.ndarray:
    """The 64-bit DCT perceptual hash (pHash) of each image, as uint64.

    As ``imagehash.phash``: grayscale, resized to 32 x 32 with Pillow's Lanczos filter, 2-D DCT,
    the 8 x 8 lowest frequencies (the DC term included), bit = coefficient > their median; the
    first coefficient is the most significant bit, so ``f"{h:016x}"`` equals ``str(phash(...))``.
    Robust to re-encoding, resizing and small colour changes; not to flips, crops or rotations.
    """
    hashes = [np.zeros(0, np.uint64)]
    for batch in _batches(images):
        low = _low_frequencies(batch)[:, :_HASH_SIDE, :_HASH_SIDE]
        hashes.append(_bits_above_median(low.reshape(len(low), -1))[:, 0])
    return np.concatenate(hashes)


def hamming_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Bits that differ between two uint64 hash arrays (broadcast, element by element)."""
    return np.bitwise_count(np.bitwise_xor(first, second)).astype(np.int64)


def detail_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Bits that differ between rows of two (..., 4) detail-hash arrays, out of 256."""
    return hamming_distances(first, second).sum(axis=-1)


def _flip_masks(radius: int) -> np.ndarray:
    """Every 16-bit mask with at most ``radius`` bits set (radius <= 2)."""
    singles = [1 << bit for bit in range(_CHUNK_BITS)]
    masks = {0, *singles}
    if radius >= 2:
        masks |= {a | b for a in singles for b in singles if a != b}
    return np.array(sorted(masks), dtype=np.int64)


def _chunk_candidates(values: np.ndarray, masks: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs (i < j) whose chunk values differ by one of ``masks``, in pieces of bounded size."""
    order = np.argsort(values, kind="stable")
    counts = np.bincount(values, minlength=1 << _CHUNK_BITS)
    starts = np.cumsum(counts) - counts
    for mask in masks:
        partner = values ^ mask
        sizes = counts[partner]
        ends = np.cumsum(sizes)
        first = 0
        while first < len(values):
            before = ends[first - 1] if first else 0
            last = max(int(np.searchsorted(ends, before + _CANDIDATE_LIMIT, side="right")), first + 1)
            piece = sizes[first:last]
            left = np.repeat(np.arange(first, last), piece)
            offsets = np.arange(len(left)) - np.repeat(np.cumsum(piece) - piece, piece)
            right = order[starts[partner[left]] + offsets]
            keep = left < right  # each unordered pair once, never an image with itself
            yield left[keep], right[keep]
            first = last


def near_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """All pairs ``(i, j)``, i < j, of hashes within ``max_distance`` bits: an (P, 2) int64 array.

    A multi-index search (Norouzi et al., CVPR 2012), not all N^2 pairs: the 64 bits are cut into
    4 chunks of 16; a pair within d bits has some chunk within d // 4 bits, so only pairs found
    by looking up each chunk's few variants are compared. 50,000 hashes take well under a second.
    """
    if not 0 <= max_distance <= MAX_NEAR_DISTANCE:
        raise ValueError(f"max_distance must be between 0 and {MAX_NEAR_DISTANCE}. Received: {max_distance}")
    hashes = np.asarray(hashes, dtype=np.uint64)
    masks = _flip_masks(max_distance // _CHUNKS)
    found = []
    for chunk in range(_CHUNKS):
        shift = np.uint64(_CHUNK_BITS * chunk)
        values = ((hashes >> shift) & np.uint64(0xFFFF)).astype(np.int64)
        for left, right in _chunk_candidates(values, masks):
            close = hamming_distances(hashes[left], hashes[right]) <= max_distance
            found.append(left[close] * len(hashes) + right[close])
    keys = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    return np.stack([keys // max(len(hashes), 1), keys % max(len(hashes), 1)], axis=1)


def connected_components(count: int, pairs: np.ndarray) -> np.ndarray:
    """Each node's component, named by its smallest member, for ``count`` nodes and (P, 2) edges.

    Vectorised hooking and pointer jumping (Shiloach-Vishkin style): no Python loop over edges.
    """
    parent = np.arange(count)
    if len(pairs) == 0:
        return parent
    left, right = np.asarray(pairs).T
    while True:
        roots_left, roots_right = parent[left], parent[right]
        lower = np.minimum(roots_left, roots_right)
        hooked = parent.copy()
        np.minimum.at(hooked, roots_left, lower)
        np.minimum.at(hooked, roots_right, lower)
        while not np.array_equal(hooked[hooked], hooked):
            hooked = hooked[hooked]
        if np.array_equal(hooked, parent):
            return parent
        parent = hooked
