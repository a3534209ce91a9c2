"""The image reader against arbitrary bytes, and the memory that decoding a big folder takes."""

from __future__ import annotations

import gc
import io
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from messy_files import encode, photo
from PIL import Image

from cnnkit.data import DataError, decode_image, load_image_folder, parallel_decode


def _seed_files() -> list[bytes]:
    """One small valid file per format: mutations of these reach deep into each decoder."""
    colour = Image.new("RGB", (6, 5), (200, 40, 120))
    return [
        photo(6, 5, format="JPEG"),
        photo(6, 5, format="PNG"),
        encode(colour, "GIF"),
        encode(colour, "BMP"),
        encode(colour, "WEBP"),
        encode(colour, "TIFF"),
        encode(Image.new("CMYK", (6, 5), (255, 0, 0, 0)), "JPEG"),
        encode(Image.new("I;16", (6, 5), 1000), "PNG"),
    ]


SEED_FILES = _seed_files()
# The tracemalloc domain numpy reports its data allocations in (numpy/_core/include/numpy/ndarraytypes.h).
_NUMPY_DOMAIN = 389047
MAGIC_HEADERS = [
    b"\xff\xd8\xff\xe0",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"GIF87a",
    b"BM",
    b"RIFF",
    b"II*\x00",
    b"MM\x00*",
]


@pytest.fixture(autouse=True)
def small_pixel_limit(monkeypatch):
    # Mutated headers claim huge sizes: keep what Pillow will allocate for them small
    # (it refuses over twice the limit with DecompressionBombError, a DataError here too).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)


def assert_decodes_or_refuses(data: bytes) -> None:
    for size in (None, 8):
        try:
            image = decode_image(data, size, "fuzz.bin")
        except DataError:
            continue
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


# Pillow warns about the corrupt metadata it meets (and recovers from): expected noise here.
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::PIL.Image.DecompressionBombWarning")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=600) | st.tuples(st.sampled_from(MAGIC_HEADERS), st.binary(max_size=600)).map(b"".join)
)
def test_random_bytes_only_ever_raise_data_error(data):
    assert_decodes_or_refuses(data)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::PIL.Image.DecompressionBombWarning")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SEED_FILES),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    st.integers(0, 10_000),
    st.binary(max_size=64),
)
def test_mutated_valid_files_only_ever_raise_data_error(seed, flips, cut, tail):
    data = bytearray(seed)
    for position, value in flips:
        data[position % len(data)] = value
    assert_decodes_or_refuses(bytes(data[: max(cut % (len(data) + 1), 1)]) + tail)


@pytest.mark.parametrize("workers", [1, 2])
def test_decoding_a_big_folder_takes_the_tensor_and_a_small_constant(tmp_path, monkeypatch, workers):
    count, side, broken_every = 3000, 32, 4
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), "BMP")
    for index in range(count):
        folder = tmp_path / "d" / f"class{index % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        # Every fourth file is broken, so the output array is shrunk at the end.
        (folder / f"{index:05d}.bmp").write_bytes(b"junk" if index % broken_every == 0 else data)
    monkeypatch.setattr(parallel_decode, "PARALLEL_THRESHOLD", 0)
    # Warm up on a small folder, so that first-use imports (Pillow plugins, the pool) are not counted.
    for name in ("a/1.bmp", "b/1.bmp"):
        (tmp_path / "warm-up" / name).parent.mkdir(parents=True)
        (tmp_path / "warm-up" / name).write_bytes(data)
    load_image_folder(tmp_path / "warm-up", workers=workers, progress=False)
    slots = count * side * side * 3
    gc.collect()
    tracemalloc.start()
    try:
        splits = load_image_folder(tmp_path / "d", workers=workers, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
        arrays = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, _NUMPY_DOMAIN)])
        big_arrays = [trace.size for trace in arrays.traces if trace.size > 2**20]
    finally:
        tracemalloc.stop()
    kept = count - count // broken_every
    assert splits.train.images.shape == (kept, side, side, 3) and len(splits.skipped) == count // broken_every
    # Peak: the one preallocated array plus names, listing and chunks in flight. A second copy of
    # the images (an np.stack of decoded chunks, a compaction copy) would add over 6 MiB.
    assert peak < slots + 4 * 2**20, f"peak {peak / 2**20:.1f} MiB for a {slots / 2**20:.1f} MiB array"
    # What stays is that array shrunk to the images kept: the broken files' slots were handed back.
    assert big_arrays == [kept * side * side * 3]
    assert (splits.train.images[0].numpy() == np.asarray(Image.open(io.BytesIO(data)))).all()
