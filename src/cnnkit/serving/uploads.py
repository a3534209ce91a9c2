"""Reading a prediction request: its body within a size limit, the images in it, decoded.

A request carries images either as ``multipart/form-data`` (field ``files``, repeated, or
``file``) or as one raw image body (``Content-Type: image/*`` or ``application/octet-stream``).
Reading is bounded: a body over the limit is refused from its ``Content-Length`` before any of it
is read, or, sent without one, as soon as the bytes read pass the limit. Parsing and decoding are
plain functions, so the app runs them in worker threads, off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from cnnkit.data.decode import decode_image, image_pixels
from cnnkit.data.errors import DataError
from cnnkit.inference.predictor import Predictor

IMAGE_FIELDS = ("files", "file")
RAW_BODY_NAME = "request body"
# Field names shown when a multipart body lacks the image field: a few, each cut short, so that
# an error never echoes a large request back.
_SHOWN_FIELDS, _SHOWN_NAME_CHARACTERS = 5, 40


class RequestError(Exception):
    """A request the service refuses, with the HTTP status to answer and a one-line reason."""

    def __init__(self, status_code: int, detail: str | list) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


@dataclass(frozen=True)
class Upload:
    """One image as sent: the name it is reported under (its file name) and its bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class DecodedImage:
    """An upload's pixels (``image_size`` square, RGB uint8), or why there are none."""

    name: str
    pixels: np.ndarray | None = None
    error: str | None = None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it is known or seen to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, f"Invalid Content-Length header: {declared!r}.")
        if int(declared) > limit:
            raise RequestError(413, _too_large(limit, int(declared)))
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a chunked body has no Content-Length: stop reading at the limit
            raise RequestError(413, _too_large(limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int, declared: int | None = None) -> str:
    size = f"{declared / 2**20:.1f} MiB, " if declared is not None else ""
    return f"The request body is too large: {size}over the {limit / 2**20:g} MiB limit."


def split_uploads(content_type: str | None, body: bytes, max_images: int) -> list[Upload]:
    """The images a request body carries, in order.

    Raises:
        RequestError: 415 for a content type that carries no image, 400 for an empty or
            malformed body, 422 for a multipart body without a ``files`` or ``file`` field,
            413 for more than ``max_images`` images.
    """
    media_type, options = parse_options_header(content_type)
    if media_type == b"multipart/form-data":
        return _multipart_uploads(body, options.get(b"boundary"), max_images)
    if media_type.startswith(b"image/") or media_type == b"application/octet-stream":
        if not body:
            raise RequestError(400, "The request body is empty: send the image file's bytes.")
        return [Upload(RAW_BODY_NAME, body)]
    shown = media_type.decode("latin-1") or "none"
    raise RequestError(
        415,
        f"Unsupported Content-Type ({shown}): send images as multipart/form-data in the field 'files', "
        "or one image as the raw body with Content-Type image/* or application/octet-stream.",
    )


class _PartCollector:
    """python-multipart callbacks that keep each part's field name, file name and bytes."""

    def __init__(self, max_images: int) -> None:
        self.max_images = max_images
        self.uploads: list[Upload] = []
        self.other_fields: list[str] = []
        self.finished = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._data: list[bytes] = []

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._add_header_name(data[start:end]),
            "on_header_value": lambda data, start, end: self._add_header_value(data[start:end]),
            "on_header_end": self._header_end,
            "on_part_data": lambda data, start, end: self._data.append(data[start:end]),
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""
        self._data = []

    def _add_header_name(self, piece: bytes) -> None:
        self._header_name += piece

    def _add_header_value(self, piece: bytes) -> None:
        self._header_value += piece

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _part_end(self) -> None:
        _, options = parse_options_header(self._disposition)
        field = options.get(b"name", b"").decode("utf-8", "replace")
        if field not in IMAGE_FIELDS:
            self.other_fields.append(field)
            return
        if len(self.uploads) == self.max_images:
            raise RequestError(413, f"Too many images in one request: the limit is {self.max_images}.")
        index = len(self.uploads)
        name = options.get(b"filename", b"").decode("utf-8", "replace") or f"{field}[{index}]"
        self.uploads.append(Upload(name, b"".join(self._data)))

    def _end(self) -> None:
        self.finished = True


def _multipart_uploads(body: bytes, boundary: bytes | None, max_images: int) -> list[Upload]:
    if not boundary:
        raise RequestError(400, "The multipart Content-Type has no boundary parameter.")
    collector = _PartCollector(max_images)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        parser.write(body)
        parser.finalize()
    except FormParserError as error:
        raise RequestError(400, f"Invalid multipart body: {error}") from None
    if not collector.finished:
        raise RequestError(400, "Invalid multipart body: it ends before its closing boundary.")
    if not collector.uploads:
        received = _short_list(collector.other_fields)
        message = f"Field required: send images in the multipart field 'files' (received fields: {received})"
        # The shape of FastAPI's own validation errors, so that clients handle both alike.
        raise RequestError(422, [{"type": "missing", "loc": ["body", "files"], "msg": message}])
    return collector.uploads


def _short_list(names: list[str]) -> str:
    shown = [repr(name[:_SHOWN_NAME_CHARACTERS]) for name in names[:_SHOWN_FIELDS]]
    more = f" and {len(names) - _SHOWN_FIELDS} more" if len(names) > _SHOWN_FIELDS else ""
    return ", ".join(shown) + more if shown else "none"


def request_pixels(uploads: list[Upload], limit: int) -> int:
    """The pixels the uploads' headers declare, together (no decoding); 413 past ``limit``.

    Decoding costs time in proportion to pixels, not bytes: a few MB of single-colour PNGs can
    declare billions of pixels. A file that is no image counts as none (it fails cheaply).
    """
    total = sum(image_pixels(upload.data) or 0 for upload in uploads)
    if total > limit:
        raise RequestError(
            413,
            f"The images of one request hold too many pixels: {total / 1e6:,.0f} megapixels, over the "
            f"{limit / 1e6:g} megapixel limit a request. Send them in several requests, or smaller.",
        )
    return total


def decode_upload(upload: Upload, image_size: int, resize_size: int | None = None) -> DecodedImage:
    """``upload`` as an ``image_size`` square RGB uint8 array (via ``resize_size``, see
    ``decode_image``), or the one-line reason it is not one."""
    try:
        pixels = decode_image(upload.data, image_size, upload.name, resize_size)
    except DataError as error:  # every decoder failure, too many pixels included
        return DecodedImage(upload.name, error=str(error))
    return DecodedImage(upload.name, pixels=pixels)


def decode_uploads(uploads: list[Upload], predictor: Predictor) -> list[DecodedImage]:
    return [decode_upload(upload, predictor.image_size, predictor.resize_size) for upload in uploads]


def classify_uploads(predictor: Predictor, uploads: list[Upload | DecodedImage]) -> list[np.ndarray | str]:
    """Each upload's class probabilities, or the one-line reason it is not an image.

    What the service's micro-batcher runs in its worker thread: decoding and the forward pass in
    one call, for the uploads of all the requests in a batch (a large request arrives decoded).
    """
    decoded = [
        upload
        if isinstance(upload, DecodedImage)
        else decode_upload(upload, predictor.image_size, predictor.resize_size)
        for upload in uploads
    ]
    pixels = [image.pixels for image in decoded if image.pixels is not None]
    rows = iter(predictor.predict(np.stack(pixels)) if pixels else ())
    return [image.error if image.error is not None else next(rows) for image in decoded]
