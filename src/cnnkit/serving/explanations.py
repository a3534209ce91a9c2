"""``POST /v1/explain``: one image's prediction and the Grad-CAM overlay of its decided class
(issue 22), a PNG of the centre crop the network saw, for a checkpoint's service.

Grad-CAM hooks the network and sets it to eval mode while it runs, so it must never run beside
a forward pass of the same module, and the micro-batcher runs the service's forward passes
whenever requests come. Explanations therefore run on a copy of the network made when the app is
built (``ServiceExplainer``), one at a time (a thread of their own, and a lock), while the
prediction they explain still comes from the batcher: the overlay explains the very answer
``/v1/predict`` gives, and predictions never wait behind an explanation.

An ONNX model holds no gradients: its service answers 501. Torch is imported only for a
checkpoint (through the classifier it already loaded): an ONNX service never loads it.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from PIL import Image

from cnnkit.inference.predictor import Predictor
from cnnkit.serving.batcher import MicroBatcher
from cnnkit.serving.results import rank_results
from cnnkit.serving.schemas import ExplainResponse, error_responses, upload_request_body
from cnnkit.serving.uploads import (
    DecodedImage,
    RequestError,
    Upload,
    decode_upload,
    read_body,
    request_pixels,
    split_uploads,
)

# The body is read by hand, as /v1/predict's is, so OpenAPI is told what it takes: one image.
EXPLAIN_REQUEST_BODY = upload_request_body(
    {"type": "string", "format": "binary", "description": "One image file (or field 'file')."}, required=False
)
EXPLAIN_ERRORS = error_responses(
    {
        400: "Malformed body, or more than one image.",
        413: "Body larger than the upload limit, or the image holds too many pixels.",
        415: "Not an image: an unsupported Content-Type, or the image cannot be decoded.",
        422: "No 'files' field in a multipart body, or a bad top_k.",
        501: "The service runs an exported ONNX model, which cannot be explained.",
    }
)

logger = logging.getLogger("cnnkit.serving")


class ServiceExplainer:
    """Grad-CAM overlays from a copy of a checkpoint's classifier, one at a time (see the module's notes)."""

    def __init__(self, classifier: Any) -> None:
        # A copy: the served network's forward passes never meet the hooks Grad-CAM adds.
        self.classifier = copy.deepcopy(classifier)
        self.lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnkit-explain")

    def overlay_png(self, pixels: np.ndarray, class_index: int) -> bytes:
        """The PNG of ``pixels``' (one uint8 ``(H, W, 3)`` image, decoded as the service decodes)
        centre crop under the Grad-CAM heatmap of class ``class_index``."""
        with self.lock:
            # A copy: decoded pixels may be read-only, which torch warns of.
            overlay = self.classifier.explanation_overlays(np.array(pixels[None]), [class_index])[0]
        buffer = io.BytesIO()
        Image.fromarray(overlay).save(buffer, format="PNG")
        return buffer.getvalue()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def service_explainer(predictor: Predictor) -> ServiceExplainer | None:
    """An explainer for a checkpoint's predictor (traced or not); None for any other (ONNX)."""
    classifier = getattr(predictor, "classifier", None)
    return ServiceExplainer(classifier) if hasattr(classifier, "explanation_overlays") else None


def read_one_image(
    content_type: str | None, body: bytes, predictor: Predictor, max_upload_images: int, max_pixels: int
) -> tuple[Upload, DecodedImage]:
    """The one image a body carries, decoded (in a worker thread, off the event loop).

    Raises ``RequestError``: as ``split_uploads`` does, 400 for more than one image, 413 for too
    many pixels, 415 for a file that is no image."""
    uploads = split_uploads(content_type, body, max_upload_images)
    if len(uploads) != 1:
        raise RequestError(
            400, f"POST /v1/explain takes one image; send several to /v1/predict. Received: {len(uploads)}"
        )
    request_pixels(uploads, max_pixels)
    decoded = decode_upload(uploads[0], predictor.image_size, predictor.resize_size)
    if decoded.error is not None:
        raise RequestError(415, decoded.error)
    return uploads[0], decoded


def add_explain_route(
    app: FastAPI,
    predictor: Predictor,
    batcher: MicroBatcher,
    limits: Any,
    explainer: ServiceExplainer | None,
    min_confidence: float | None = None,
) -> None:
    """``POST /v1/explain`` on ``app``; ``limits`` a ``ServiceLimits``."""
    class_names = list(predictor.class_names)
    thresholds = getattr(predictor, "thresholds", None)  # multi-label (None: 0.5 each)
    model_file = str(predictor.metadata.get("path", "the model")).replace("\\", "/").rsplit("/", 1)[-1]

    @app.post(
        "/v1/explain",
        response_model=ExplainResponse,
        responses=EXPLAIN_ERRORS,
        openapi_extra=EXPLAIN_REQUEST_BODY,
        summary="One image's prediction and where the model saw its class (a Grad-CAM overlay)",
    )
    async def explain(
        request: Request,
        top_k: Annotated[
            int, Query(ge=1, le=1000, description="Classes shown (at most all; single-label models).")
        ] = 5,
    ) -> JSONResponse:
        """One image, sent as to `/v1/predict`. Answers its `result` (as `/v1/predict`'s), the
        `explained_class` (the top class; multi-label: the most probable label) and
        `overlay_png_base64`: a PNG of the centre crop the network saw (`input_size` square) under
        the Grad-CAM heatmap of that class, hot (red) where the class was found. A checkpoint only:
        an ONNX model's service answers 501."""
        if explainer is None:
            raise RequestError(
                501,
                "Explanations need the checkpoint: this service runs an exported ONNX model, which holds "
                f"no gradients; serve the checkpoint it was exported from. Received: {model_file}",
            )
        body = await read_body(request, limits.max_upload_bytes)
        loop = asyncio.get_running_loop()
        upload, decoded = await loop.run_in_executor(
            explainer.executor,
            read_one_image,
            request.headers.get("content-type"),
            body,
            predictor,
            limits.max_images_per_request,
            limits.max_request_pixels,
        )
        del body
        try:
            outcomes = await batcher.submit([decoded])  # the answer /v1/predict gives, batched alike
            index = int(predictor.task.top_k(outcomes[0][None], 1)[0][0, 0])
            png = await loop.run_in_executor(explainer.executor, explainer.overlay_png, decoded.pixels, index)
        except Exception as error:
            logger.exception("The model failed to explain a request")
            raise RequestError(500, f"The model failed ({type(error).__name__}: {error})") from None
        top_k = min(top_k, len(class_names))
        (result,) = rank_results(
            [upload], outcomes, class_names, top_k, predictor.task, thresholds, min_confidence
        )
        return JSONResponse(
            {
                "task": predictor.task.name,
                "result": result,
                "explained_class": class_names[index],
                "overlay_png_base64": base64.b64encode(png).decode("ascii"),
            }
        )
