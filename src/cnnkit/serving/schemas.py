"""The JSON the service answers with, as pydantic models: they document the API in OpenAPI.

Responses are built as plain dicts (validating every response would cost time on each request);
these models describe those dicts, and the tests check that the two agree.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RankedClass(BaseModel):
    """One of an image's most probable classes."""

    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(alias="class", description="The class name.")
    probability: float = Field(ge=0, le=1, description="Softmax probability, rounded to 6 decimals.")


class ChosenLabel(BaseModel):
    """One label of a multi-label model's label set."""

    label: str = Field(description="The label's name.")
    probability: float = Field(ge=0, le=1, description="Sigmoid probability, rounded to 6 decimals.")


class ImageResult(BaseModel):
    """One image's top classes, most probable first (a multi-label model: its label set and every
    label's probability), or why it could not be classified."""

    name: str = Field(description="The uploaded file's name ('request body' for a raw image body).")
    predictions: list[RankedClass] | None = Field(
        default=None, description="A single-label model's top classes. Absent when 'error' is set."
    )
    labels: list[ChosenLabel] | None = Field(
        default=None,
        description="A multi-label model's labels at or above their thresholds, most probable first "
        "(maybe none). Absent when 'error' is set.",
    )
    probabilities: dict[str, float] | None = Field(
        default=None, description="A multi-label model's probability of every label, in its order."
    )
    uncertain: bool | None = Field(
        default=None,
        description="With the service's minimum confidence (serve --min-confidence): whether the top "
        "probability is below it, the top classes then best guesses rather than an answer.",
    )
    error: str | None = Field(default=None, description="Why this image was not classified.")


class PredictResponse(BaseModel):
    """The results of a prediction request, one per image, in the order they were sent."""

    task: str = Field(
        default="single_label",
        description="'single_label' (results hold 'predictions') or 'multi_label' (results hold "
        "'labels' and 'probabilities').",
    )
    results: list[ImageResult]


class ExplainResponse(BaseModel):
    """One image's prediction and the Grad-CAM overlay of its decided class."""

    task: str = Field(default="single_label", description="'single_label' or 'multi_label'.")
    result: ImageResult = Field(description="The image's prediction, as POST /v1/predict gives it.")
    explained_class: str = Field(
        description="The class the overlay explains: the top class (multi-label: the most probable label)."
    )
    overlay_png_base64: str = Field(
        description="A PNG, base64-encoded: the centre crop the network saw (input_size square) under the "
        "Grad-CAM heatmap of explained_class, hot (red) where the model found it, cold (blue) elsewhere."
    )


class Limits(BaseModel):
    """What the service accepts and how it batches."""

    max_upload_bytes: int
    max_images_per_request: int
    max_batch: int
    batch_wait_ms: float
    max_request_pixels: int


class ModelInfo(BaseModel):
    """The model being served."""

    name: str
    classes: list[str]
    input_size: int = Field(description="Images are resized (shorter side) and center-cropped to this.")
    metrics: dict[str, dict[str, float | None]] = Field(
        description="The model's metrics by the data they were measured on: 'train', 'validation' "
        "(the run's held-out split, when it had one) and 'test' (the run's test split, when it had one), "
        "each e.g. {'loss': 0.31, 'accuracy': 0.91}."
    )
    format: str = Field(description="'checkpoint' (PyTorch) or 'onnx'.")
    backend: str = Field(description="What runs the model, e.g. 'torch (cpu, bf16)' or 'onnxruntime (cpu)'.")
    tta: int = Field(description="Test-time augmentation level: 0 none, 1 mirror, 2 mirror and shifts.")
    file: str = Field(description="The model file's name.")
    task: str = Field(default="single_label", description="'single_label' or 'multi_label'.")
    thresholds: dict[str, float] | None = Field(
        default=None, description="A multi-label model's probability threshold of each label."
    )
    details: dict[str, Any] = Field(description="Epoch, recipe, cnnkit version and other metadata.")
    limits: Limits


class Health(BaseModel):
    """The service is up; batching counters since it started."""

    status: str
    batching: dict[str, float]


class ErrorResponse(BaseModel):
    """A refused request: one line saying why (or FastAPI's list of validation errors)."""

    detail: str | list[dict[str, Any]]


_BINARY = {"type": "string", "format": "binary"}


def upload_request_body(files: dict[str, Any], required: bool = True) -> dict[str, Any]:
    """OpenAPI's ``requestBody`` of a route that reads its body by hand (bounded, then parsed off
    the event loop): multipart with a ``files`` field described by ``files``, or one raw image."""
    schema: dict[str, Any] = {"type": "object", "properties": {"files": files}}
    if required:
        schema["required"] = ["files"]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": schema},
                "image/*": {"schema": _BINARY},
                "application/octet-stream": {"schema": _BINARY},
            },
        }
    }


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI's ``responses`` for a route's error statuses, each an ``ErrorResponse``."""
    return {status: {"model": ErrorResponse, "description": text} for status, text in descriptions.items()}
