"""The HTTP service: an ASGI app (FastAPI) around one loaded model.

Work is kept off the event loop: images are decoded and classified in the micro-batcher's
thread (see ``batcher``), and a large body is split into its files in another, so the loop only
moves bytes and JSON and stays free to accept requests while a batch computes. Explanations
(``POST /v1/explain``, a checkpoint's service) run in a thread of their own on a copy of the
network (see ``explanations``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from cnnkit import __version__
from cnnkit.inference.predictor import Predictor
from cnnkit.reports.splits import metrics_by_split
from cnnkit.serving.batcher import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS, MicroBatcher
from cnnkit.serving.explanations import add_explain_route, service_explainer
from cnnkit.serving.results import rank_results
from cnnkit.serving.schemas import (
    Health,
    ModelInfo,
    PredictResponse,
    error_responses,
    upload_request_body,
)
from cnnkit.serving.uploads import (
    RequestError,
    Upload,
    classify_uploads,
    decode_uploads,
    read_body,
    request_pixels,
    split_uploads,
)
from cnnkit.tasks.multi_label import DEFAULT_THRESHOLD

STATIC_DIRECTORY = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20
DEFAULT_MAX_IMAGES_PER_REQUEST = 256
# Splitting a multipart body takes ~0.1 ms per 10 KiB on a busy core: smaller bodies are split on
# the event loop (a hand-off to a thread costs more), larger ones in a thread, not to stall it.
INLINE_SPLIT_BYTES = 64 * 2**10
# Decoding takes time in proportion to pixels (~0.5 s for a 64-megapixel PNG on a busy core): a
# request's images may hold this many together (413 beyond), and a request holding more than
# LARGE_REQUEST_PIXELS is decoded in a thread of its own, so that the model's thread, which
# decodes small requests, never waits behind it.
DEFAULT_MAX_REQUEST_PIXELS = 256_000_000
LARGE_REQUEST_PIXELS = 4_000_000
# The page loads nothing from elsewhere; this makes sure an injected script could not either.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# The body is read by hand (bounded, then parsed off the loop), so OpenAPI is told what it takes.
PREDICT_REQUEST_BODY = upload_request_body(
    {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "description": "One or more image files (or one, as the field 'file').",
    }
)
_ERRORS = error_responses(
    {
        400: "Malformed body (empty, or broken multipart).",
        413: "Body larger than the upload limit, or too many images.",
        415: "Not an image: an unsupported Content-Type, or the only image cannot be decoded.",
        422: "No 'files' field in a multipart body, or a bad top_k.",
    }
)


logger = logging.getLogger("cnnkit.serving")


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may hold, and how requests are batched."""

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_images_per_request: int = DEFAULT_MAX_IMAGES_PER_REQUEST
    max_batch: int = DEFAULT_MAX_BATCH
    batch_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS


def create_app(
    predictor: Predictor,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_images_per_request: int = DEFAULT_MAX_IMAGES_PER_REQUEST,
    max_batch: int = DEFAULT_MAX_BATCH,
    batch_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
    min_confidence: float | None = None,
) -> FastAPI:
    """The service for ``predictor`` (see ``cnnkit.inference.predictor.load_predictor``), as an ASGI app.

    Routes: ``POST /v1/predict``, ``POST /v1/explain`` (a checkpoint's Grad-CAM overlay; 501
    for an ONNX model), ``GET /v1/model``, ``GET /healthz``, the web page at ``/`` (with
    ``/static/``), and FastAPI's ``/docs`` and ``/openapi.json``.

    Args:
        max_upload_bytes: largest request body; larger ones get 413 before they are read in full.
        max_images_per_request: most images one request may carry (413 beyond).
        max_batch: most images run through the model at once.
        batch_wait_ms: how long a request waits for others to share its batch.
        max_request_pixels: most pixels the images of one request may declare together (413 beyond).
        min_confidence: single-label: each result says whether its top probability is below it
            (``uncertain``: the top classes are then best guesses); None: no such field.
    """
    for name, value in (
        ("max_upload_bytes", max_upload_bytes),
        ("max_images_per_request", max_images_per_request),
        ("max_request_pixels", max_request_pixels),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1. Received: {name}={value}")
    limits = ServiceLimits(
        max_upload_bytes, max_images_per_request, max_batch, batch_wait_ms, max_request_pixels
    )
    batcher = MicroBatcher(
        functools.partial(classify_uploads, predictor), max_batch=max_batch, max_wait_ms=batch_wait_ms
    )
    large_decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnkit-large-decode")
    explainer = service_explainer(predictor)  # None for an ONNX model

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await batcher.aclose()
        large_decoder.shutdown(wait=False, cancel_futures=True)
        if explainer is not None:
            explainer.close()

    app = FastAPI(
        title="cnnkit",
        version=__version__,
        summary="Image classification with a cnnkit model.",
        description="Send images to `POST /v1/predict` (one to `POST /v1/explain` for where the model "
        "saw its class); `GET /` is a web page to try it.",
        lifespan=lifespan,
    )
    app.state.predictor, app.state.batcher, app.state.limits = predictor, batcher, limits
    app.add_exception_handler(RequestError, _request_error_response)
    app.add_exception_handler(RequestValidationError, _validation_error_response)
    app.mount("/static", StaticFiles(directory=STATIC_DIRECTORY), name="static")
    _add_information_routes(app, describe_model(predictor, limits), batcher)
    _add_predict_route(app, predictor, batcher, limits, large_decoder, min_confidence)
    add_explain_route(app, predictor, batcher, limits, explainer, min_confidence)
    return app


def _add_information_routes(app: FastAPI, model_info: dict[str, Any], batcher: MicroBatcher) -> None:
    page = (STATIC_DIRECTORY / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def web_page() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/v1/model", response_model=ModelInfo, summary="The model being served")
    async def model() -> JSONResponse:
        return JSONResponse(model_info)

    @app.get("/healthz", response_model=Health, summary="Liveness, with batching counters")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", "batching": batcher.statistics.to_dict()})

    # Browsers and uptime monitors probe with HEAD: the headers of GET, no body (the server drops it).
    for path, endpoint in (("/", web_page), ("/v1/model", model), ("/healthz", health)):
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)


def _add_predict_route(
    app: FastAPI,
    predictor: Predictor,
    batcher: MicroBatcher,
    limits: ServiceLimits,
    large_decoder: ThreadPoolExecutor,
    min_confidence: float | None = None,
) -> None:
    class_names = list(predictor.class_names)
    thresholds = getattr(predictor, "thresholds", None)  # multi-label (None: 0.5 each)

    def read_uploads(content_type: str | None, body: bytes) -> tuple[list[Upload], int]:
        uploads = split_uploads(content_type, body, limits.max_images_per_request)
        return uploads, request_pixels(uploads, limits.max_request_pixels)

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=_ERRORS,
        openapi_extra=PREDICT_REQUEST_BODY,
        summary="Top classes (multi-label: label sets) of one or more images",
    )
    async def predict(
        request: Request,
        top_k: Annotated[
            int, Query(ge=1, le=1000, description="Classes per image (at most all; single-label models).")
        ] = 5,
    ) -> JSONResponse:
        """Images as multipart/form-data (field `files`, repeated, or `file`) or one raw image body
        (`Content-Type: image/*`). Results come in the order the images were sent; an image that
        cannot be decoded gets an `error` in its place (or 415 when it is the only one). A
        multi-label model (`task` "multi_label") gives each image its `labels` at or above their
        thresholds and every label's `probabilities` instead of the top classes."""
        body = await read_body(request, limits.max_upload_bytes)
        split = functools.partial(read_uploads, request.headers.get("content-type"), body)
        uploads, pixels = split() if len(body) <= INLINE_SPLIT_BYTES else await _in_thread(split)
        del body, split  # the uploads hold what is needed
        items: list = uploads
        if pixels > LARGE_REQUEST_PIXELS:  # decoded beside the model's thread, not in it
            loop = asyncio.get_running_loop()
            items = await loop.run_in_executor(large_decoder, decode_uploads, uploads, predictor)
        try:
            outcomes = await batcher.submit(items)
        except Exception as error:
            logger.exception("The model failed on a request")
            raise RequestError(500, f"The model failed ({type(error).__name__}: {error})") from None
        if len(outcomes) == 1 and isinstance(outcomes[0], str):
            raise RequestError(415, outcomes[0])
        top_k = min(top_k, len(class_names))
        ranked = rank_results(
            uploads, outcomes, class_names, top_k, predictor.task, thresholds, min_confidence
        )
        return JSONResponse({"task": predictor.task.name, "results": ranked})


async def _in_thread(function: functools.partial) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, function)


def describe_model(predictor: Predictor, limits: ServiceLimits) -> dict[str, Any]:
    """What ``GET /v1/model`` answers (see ``schemas.ModelInfo``)."""
    metadata = dict(predictor.metadata)
    source = metadata.get("source", "unknown")
    if source == "checkpoint":
        traced = ", traced" if metadata.get("runner") == "torchscript" else ""
        backend = f"torch ({metadata.get('device', 'cpu')}, {metadata.get('precision', 'fp32')}{traced})"
    elif source == "onnx":
        backend = "onnxruntime (cpu, fp32)"
    else:
        backend = type(predictor).__name__
    shown = (
        "epoch",
        "recipe",
        "cnnkit_version",
        "model_arguments",
        "normalization",
        "input_format",
        "resize_size",
    )
    return _json_safe(
        {
            "name": metadata.get("model_name", "unknown"),
            "classes": list(predictor.class_names),
            "input_size": int(predictor.image_size),
            "metrics": metrics_by_split(metadata.get("metrics", {})),
            "format": source,
            "backend": backend,
            "tta": int(metadata.get("tta", 0)),
            "file": Path(str(metadata.get("path", ""))).name,  # not the server's folders
            "task": predictor.task.name,
            **_thresholds(predictor),
            "details": {key: metadata[key] for key in shown if key in metadata},
            "limits": asdict(limits),
        }
    )


def _thresholds(predictor: Predictor) -> dict[str, dict[str, float]]:
    """A multi-label model's ``{"thresholds": {label: threshold}}`` (0.5 where it has none)."""
    if not predictor.task.multi_label:
        return {}
    stored = getattr(predictor, "thresholds", None)
    limits = stored if stored is not None else [DEFAULT_THRESHOLD] * len(predictor.class_names)
    return {"thresholds": dict(zip(predictor.class_names, limits, strict=True))}


def _json_safe(value: Any) -> Any:
    """Non-finite floats (a diverged run's NaN loss) as null: JSON has no NaN."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


async def _request_error_response(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestError)
    return JSONResponse({"detail": error.detail}, status_code=error.status_code)


async def _validation_error_response(_request: Request, error: Exception) -> JSONResponse:
    """FastAPI's 422, without the received values it would echo back (a request's size, at worst)."""
    assert isinstance(error, RequestValidationError)
    errors = [
        {key: item[key] for key in ("type", "loc", "msg") if key in item} for item in error.errors()[:5]
    ]
    return JSONResponse({"detail": errors}, status_code=422)
