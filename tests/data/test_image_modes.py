"""decode_image on every accepted format and Pillow mode: the RGB pixels it must produce."""

from __future__ import annotations

import numpy as np
import pytest
from messy_files import (
    CYAN,
    animated_gif,
    cmyk_jpeg_without_adobe_marker,
    encode,
    exif_rotated_jpeg,
    float_tiff,
    palette_png,
    photo,
    sixteen_bit,
    truncated,
)
from PIL import Image, ImageFile

import cnnkit
import cnnkit.data
from cnnkit.data import decode_image
from cnnkit.data.decode import resize_to_square
from cnnkit.data.errors import DataError, ImageDecodeError


def decoded(data: bytes, size: int | None = None) -> np.ndarray:
    image = decode_image(data, size, "test-image")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    return image


def assert_close(image: np.ndarray, colour: tuple[int, int, int], tolerance: int) -> None:
    difference = np.abs(image.astype(int) - np.array(colour)).max()
    assert difference <= tolerance, f"{image.reshape(-1, 3)[:4].tolist()} is not {colour}"


@pytest.mark.parametrize(
    ("format", "options", "tolerance"),
    [
        ("JPEG", {"quality": 95}, 3),
        ("PNG", {}, 0),
        ("BMP", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("TIFF", {}, 0),
        ("GIF", {}, 0),
    ],
)
def test_each_format_decodes_to_its_colour(format, options, tolerance):
    colour = (200, 40, 120) if format != "GIF" else (255, 0, 0)  # GIF palettes: keep it exact
    image = decoded(encode(Image.new("RGB", (5, 3), colour), format, **options))
    assert image.shape == (3, 5, 3)
    assert_close(image, colour, tolerance)


def test_gif_first_frame_is_used():
    assert_close(decoded(animated_gif()), (255, 0, 0), 0)


def test_grey_and_bilevel_become_grey_rgb():
    assert (decoded(encode(Image.new("L", (3, 2), 77), "PNG")) == 77).all()
    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)
    assert decoded(encode(bilevel, "PNG")).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_palette_with_and_without_transparency():
    assert decoded(palette_png(transparent=False)).tolist() == [[[255, 0, 0], [0, 255, 0]]]
    # The transparent index is shown on white, whatever colour its palette entry holds.
    assert decoded(palette_png(transparent=True)).tolist() == [[[255, 0, 0], [255, 255, 255]]]


@pytest.mark.parametrize("mode", ["LA", "PA", "RGBA"])
def test_alpha_is_composited_on_white(mode):
    # Left pixel opaque grey 90, right pixel fully transparent (of a dark colour).
    alpha = Image.frombytes("L", (2, 1), bytes([255, 0]))
    if mode == "PA":
        image = Image.new("P", (2, 1))
        image.putpalette([90, 90, 90, 1, 2, 3] + [0] * 762)
        image.putpixel((1, 0), 1)
    else:
        image = Image.new("RGB" if mode == "RGBA" else "L", (2, 1), 90 if mode == "LA" else (90, 90, 90))
        image.putpixel((1, 0), 3 if mode == "LA" else (1, 2, 3))
    image.putalpha(alpha)
    assert image.mode == mode
    # PNG cannot hold PA; TIFF can.
    data = encode(image, "TIFF" if mode == "PA" else "PNG")
    assert decoded(data).tolist() == [[[90, 90, 90], [255, 255, 255]]]


@pytest.mark.parametrize(
    ("format", "mode"), [("PNG", "I;16"), ("TIFF", "I;16"), ("TIFF", "I;16B"), ("TIFF", "I")]
)
def test_sixteen_bit_grey_is_scaled_not_clipped(format, mode):
    image = decoded(sixteen_bit([[0, 257, 32768, 65535]], format, mode))
    assert image[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (image[..., 0] == image[..., 2]).all()


def test_float_tiff_is_scaled_from_unit_range_or_kept_in_byte_range():
    assert decoded(float_tiff([[0.0, 0.5, 1.0, float("nan")]]))[0, :, 0].tolist() == [0, 128, 255, 0]
    assert decoded(float_tiff([[0.0, 100.0, 255.0, 300.0]]))[0, :, 0].tolist() == [0, 100, 255, 255]


def test_cmyk_jpeg_adobe_inverted_and_plain():
    # Pillow (libjpeg) writes Adobe's marker and inverted values.
    adobe = encode(Image.new("CMYK", (8, 8), (255, 0, 0, 0)), "JPEG", quality=100)
    assert Image.open(__import__("io").BytesIO(adobe)).info.get("adobe") is not None
    assert_close(decoded(adobe), CYAN, 3)
    assert_close(decoded(cmyk_jpeg_without_adobe_marker((255, 0, 0, 0))), CYAN, 3)
    assert_close(decoded(cmyk_jpeg_without_adobe_marker((0, 0, 0, 255))), (0, 0, 0), 3)


def test_cmyk_tiff_ycbcr_and_lab():
    assert_close(decoded(encode(Image.new("CMYK", (2, 2), (255, 0, 0, 0)), "TIFF")), CYAN, 0)
    # Full-range YCbCr of pure red (JFIF equations).
    assert_close(decoded(encode(Image.new("YCbCr", (2, 2), (76, 85, 255)), "TIFF")), (255, 0, 0), 3)
    assert_close(decoded(encode(Image.new("YCbCr", (2, 2), (76, 85, 255)), "JPEG")), (255, 0, 0), 6)
    # CIELAB white (L=100, a=b=0) and a saturated red.
    assert_close(decoded(encode(Image.new("LAB", (2, 2), (255, 128, 128)), "TIFF")), (255, 255, 255), 2)
    assert_close(decoded(encode(Image.new("LAB", (2, 2), (136, 208, 195)), "TIFF")), (250, 3, 11), 3)


def test_exif_orientation_turns_a_landscape_into_a_portrait():
    image = decoded(exif_rotated_jpeg())
    assert image.shape == (8, 4, 3)
    # Turning clockwise brings the left (red) half to the top.
    assert_close(image[1:3], (255, 0, 0), 40)
    assert_close(image[5:7], (0, 0, 255), 40)


@pytest.mark.parametrize(("width", "height"), [(300, 200), (17, 64), (2000, 1500), (3, 3)])
def test_any_size_is_resized_by_the_one_policy(width, height):
    data = photo(width, height, format="PNG")
    image = decoded(data, 16)
    assert image.shape == (16, 16, 3)
    expected = np.asarray(resize_to_square(Image.open(__import__("io").BytesIO(data)).convert("RGB"), 16))
    np.testing.assert_array_equal(image, expected)
    if min(width, height) >= 200:
        # A large JPEG is decoded at a reduced scale first: close to the full-size result.
        jpeg = decoded(photo(width, height, format="JPEG"), 16).astype(int)
        assert np.abs(jpeg - expected.astype(int)).mean() < 4


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_truncated_images_are_refused(format):
    with pytest.raises(ImageDecodeError, match=r"(?i)truncated") as caught:
        decode_image(truncated(photo(64, 64, format=format)), None, f"cut.{format.lower()}")
    assert "truncated" in caught.value.reason.lower()
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_importing_cnnkit_keeps_truncated_images_refused():
    # Any module setting LOAD_TRUNCATED_IMAGES would let half-grey photos into training data.
    for module in ("api", "runs.training", "runs.evaluation", "cli"):
        __import__(f"cnnkit.{module}")
    assert cnnkit.data and ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_failures_have_short_reasons_and_name_the_file():
    cases = [(b"", "empty file (0 bytes)"), (b"plain text", "cannot decode (unknown image format)")]
    for data, reason in cases:
        with pytest.raises(ImageDecodeError) as caught:
            decode_image(data, None, "x/y.png")
        assert caught.value.reason == reason and "x/y.png" in str(caught.value)
        assert isinstance(caught.value, DataError)
