"""The HTTP service: endpoints, bad requests, concurrency, the micro-batcher and ``cnnkit serve``.

Most tests talk HTTP to a real uvicorn server (in a thread) serving a tiny model trained here to
tell solid colours apart, so each answer can be checked against the colour that was sent.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.api import Classifier
from cnnkit.recipes import get_recipe
from cnnkit.serving import MicroBatcher, create_app, load_service_predictor, start_server_thread
from cnnkit.serving.schemas import ModelInfo, PredictResponse
from cnnkit.serving.uploads import Upload, decode_upload

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
IMAGE_SIZE = 16
UPLOAD_LIMIT = 2**20  # small, so that the 413 cases stay cheap
MAX_IMAGES = 8


def train_colour_checkpoint(path: Path) -> Path:
    """A tiny CNN that tells the four ``COLOURS`` apart with confidence (a few seconds on a CPU)."""
    generator = np.random.default_rng(0)
    names = list(COLOURS)
    labels = np.arange(160) % len(names)
    noise = generator.integers(-25, 26, size=(len(labels), IMAGE_SIZE, IMAGE_SIZE, 3))
    images = np.clip(np.array([COLOURS[names[label]] for label in labels])[:, None, None] + noise, 0, 255)
    classifier = Classifier("tutorial", class_names=names, image_size=IMAGE_SIZE, precision="fp32")
    classifier.fit(images.astype(np.uint8), labels, batch_size=32, epochs=3, verbose=False)
    classifier.save(path)
    return path


def encode(colour: str, image_format: str = "PNG", size: tuple[int, int] = (40, 30)) -> bytes:
    """A solid ``colour`` image file (any size: the service resizes it)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, COLOURS[colour]).save(buffer, image_format)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def colour_checkpoint(tmp_path_factory) -> Path:
    return train_colour_checkpoint(tmp_path_factory.mktemp("serve") / "colours.pt")


@pytest.fixture(scope="module")
def predictor(colour_checkpoint):
    threads = torch.get_num_threads()
    yield load_service_predictor(colour_checkpoint)
    torch.set_num_threads(threads)  # serving sets its own count: leave the other tests theirs


@pytest.fixture(scope="module")
def client(predictor):
    app = create_app(
        predictor, max_upload_bytes=UPLOAD_LIMIT, max_images_per_request=MAX_IMAGES, batch_wait_ms=10
    )
    with start_server_thread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def post_files(client: httpx.Client, files: list[tuple[str, bytes]], field: str = "files", top_k: int = 5):
    parts = [(field, (name, data, "application/octet-stream")) for name, data in files]
    return client.post("/v1/predict", params={"top_k": top_k}, files=parts)


def top_class(result: dict) -> str:
    return result["predictions"][0]["class"]


# --- information routes -------------------------------------------------------------------------


def test_model_description(client):
    response = client.get("/v1/model")
    assert response.status_code == 200
    info = ModelInfo.model_validate(response.json())
    assert (info.name, info.classes, info.input_size) == ("tutorial", list(COLOURS), IMAGE_SIZE)
    assert (info.format, info.tta, info.file) == ("checkpoint", 0, "colours.pt")
    assert info.backend.startswith("torch (cpu")
    # Trained without a validation split: its only figures are training ones, and named so.
    assert set(info.metrics) == {"train"} and "accuracy" in info.metrics["train"]
    assert info.limits.max_upload_bytes == UPLOAD_LIMIT


def test_head_requests_get_the_headers_of_get(client):
    for path in ("/", "/v1/model", "/healthz"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers["content-length"] == got.headers["content-length"]


def test_health(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_web_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200
    assert 'type="file"' in page.text and "static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        response = client.get(asset)
        assert response.status_code == 200
        assert "http://" not in response.text and "https://" not in response.text  # works offline
    assert "http://" not in page.text and "https://" not in page.text


def test_openapi_documents_the_api(client):
    schema = client.get("/openapi.json").json()
    predict = schema["paths"]["/v1/predict"]["post"]
    assert {"multipart/form-data", "image/*"} <= set(predict["requestBody"]["content"])
    assert [parameter["name"] for parameter in predict["parameters"]] == ["top_k"]
    assert {"/v1/model", "/healthz"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


# --- predictions --------------------------------------------------------------------------------


def test_multipart_images_come_back_in_order_with_top_k(client):
    sent = ["blue", "red", "yellow", "green", "red"]
    files = [(f"{colour}{index}.png", encode(colour)) for index, colour in enumerate(sent)]
    files[1] = ("red1.jpg", encode("red", "JPEG"))
    response = post_files(client, files, top_k=2)
    assert response.status_code == 200
    results = PredictResponse.model_validate(response.json()).results
    assert [result.name for result in results] == [name for name, _ in files]
    body = response.json()["results"]
    assert [top_class(result) for result in body] == sent
    for result in body:
        probabilities = [prediction["probability"] for prediction in result["predictions"]]
        assert len(probabilities) == 2 and probabilities == sorted(probabilities, reverse=True)
        assert probabilities[0] > 0.9


def test_single_file_field_and_raw_bodies(client):
    response = post_files(client, [("green.png", encode("green"))], field="file")
    assert top_class(response.json()["results"][0]) == "green"
    for content_type, colour in (("image/jpeg", "blue"), ("application/octet-stream", "yellow")):
        image = encode(colour, "JPEG")
        response = client.post("/v1/predict", content=image, headers={"content-type": content_type})
        assert response.status_code == 200
        (result,) = response.json()["results"]
        assert (result["name"], top_class(result)) == ("request body", colour)


def test_an_undecodable_file_gets_its_own_error(client):
    files = [("red.png", encode("red")), ("notes.txt", b"not an image"), ("blue.png", encode("blue"))]
    response = post_files(client, files)
    assert response.status_code == 200
    first, broken, last = response.json()["results"]
    assert (top_class(first), top_class(last)) == ("red", "blue")
    assert "predictions" not in broken
    assert broken["name"] == "notes.txt" and "Cannot decode notes.txt" in broken["error"]


def test_top_k_is_clamped_to_the_classes_and_validated(client):
    response = post_files(client, [("red.png", encode("red"))], top_k=50)
    assert len(response.json()["results"][0]["predictions"]) == len(COLOURS)
    assert post_files(client, [("red.png", encode("red"))], top_k=0).status_code == 422


def oversized_stream():
    for _ in range(3 * UPLOAD_LIMIT // 2**16):
        yield bytes(2**16)


def broken_multipart() -> tuple[bytes, str]:
    body = b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n' + encode("red")
    return body, "multipart/form-data; boundary=xyz"  # no closing boundary


@pytest.mark.parametrize(
    ("request_arguments", "status", "message"),
    [
        ({"content": bytes(UPLOAD_LIMIT + 1), "headers": {"content-type": "image/png"}}, 413, "too large"),
        ({"content": oversized_stream(), "headers": {"content-type": "image/png"}}, 413, "over the 1 MiB"),
        ({"content": b"plain text", "headers": {"content-type": "image/png"}}, 415, "Cannot decode"),
        ({"content": b"{}", "headers": {"content-type": "application/json"}}, 415, "Content-Type"),
        ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty"),
        ({"files": [("image", ("a.png", encode("red")))]}, 422, "'files'"),
        ({"files": [("files", ("a.txt", b"just text"))]}, 415, "Cannot decode a.txt"),
        ({"files": [("files", (f"{n}.png", encode("red"))) for n in range(MAX_IMAGES + 1)]}, 413, "Too many"),
        (
            {"content": broken_multipart()[0], "headers": {"content-type": broken_multipart()[1]}},
            400,
            "multipart",
        ),
    ],
    ids=[
        "over-limit",
        "over-limit-chunked",
        "not-an-image",
        "json",
        "empty",
        "wrong-field",
        "only-file-not-an-image",
        "too-many-images",
        "broken-multipart",
    ],
)
def test_bad_requests_are_refused_and_the_service_goes_on(client, request_arguments, status, message):
    response = client.post("/v1/predict", **request_arguments)
    assert response.status_code == status
    detail = response.json()["detail"]
    assert message in (detail if isinstance(detail, str) else detail[0]["msg"])
    assert top_class(post_files(client, [("red.png", encode("red"))]).json()["results"][0]) == "red"


def test_concurrent_requests_each_get_their_own_answers(client, predictor):
    generator = np.random.default_rng(1)
    requests = []
    for index in range(48):
        colours = list(generator.choice(list(COLOURS), size=1 + index % 3))
        sizes = [(int(generator.integers(8, 60)), int(generator.integers(8, 60))) for _ in colours]
        requests.append(
            [(colour, encode(colour, size=size)) for colour, size in zip(colours, sizes, strict=True)]
        )
    before = client.get("/healthz").json()["batching"]

    async def send_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=48)
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=60, limits=limits) as session:
            return await asyncio.gather(
                *(
                    session.post("/v1/predict", files=[("files", (f"{c}.png", data)) for c, data in images])
                    for images in requests
                )
            )

    responses = asyncio.run(send_all())
    after = client.get("/healthz").json()["batching"]
    for images, response in zip(requests, responses, strict=True):
        results = response.json()["results"]
        assert [top_class(result) for result in results] == [colour for colour, _ in images]
        # The very numbers a direct call gives for the same decoded pixels, not a neighbour's.
        pixels = np.stack([decode_upload(Upload("x", data), IMAGE_SIZE).pixels for _, data in images])
        expected = predictor.predict(pixels)
        for result, row in zip(results, expected, strict=True):
            for prediction in result["predictions"]:
                index = predictor.class_names.index(prediction["class"])
                assert prediction["probability"] == pytest.approx(float(row[index]), abs=2e-6)
    assert after["requests"] - before["requests"] == len(requests)
    assert after["batches"] - before["batches"] < len(requests)  # some requests shared a batch


# --- the micro-batcher --------------------------------------------------------------------------


def test_micro_batcher_forms_batches_from_concurrent_submissions():
    batches: list[list[int]] = []

    def double(items: list[int]) -> list[int]:
        batches.append(list(items))
        return [item * 2 for item in items]

    async def run() -> list[list[int]]:
        batcher = MicroBatcher(double, max_batch=4, max_wait_ms=200)
        try:
            return await asyncio.gather(*(batcher.submit([number]) for number in range(10)))
        finally:
            await batcher.aclose()

    results = asyncio.run(run())
    assert results == [[number * 2] for number in range(10)]
    assert [len(batch) for batch in batches] == [4, 4, 2]  # full batches go at once, the rest after the wait
    assert sorted(item for batch in batches for item in batch) == list(range(10))


def test_micro_batcher_keeps_errors_with_their_submission():
    def process(items: list[str]) -> list[str]:
        if "bad" in items:
            raise ValueError("cannot process 'bad'")
        return [item.upper() for item in items]

    async def run():
        batcher = MicroBatcher(process, max_batch=16, max_wait_ms=50)
        try:
            submissions = [["a"], ["b", "bad"], ["c", "d"], [], ["e"] * 20]
            return await asyncio.gather(
                *(batcher.submit(items) for items in submissions), return_exceptions=True
            ), batcher
        finally:
            await batcher.aclose()

    (first, failed, third, empty, large), batcher = asyncio.run(run())
    assert (first, third, empty, large) == (["A"], ["C", "D"], [], ["E"] * 20)  # 20 > max_batch: ran alone
    assert isinstance(failed, ValueError)
    assert batcher.statistics.failed_batches >= 1


def test_micro_batcher_skips_cancelled_submissions_and_refuses_work_once_closed():
    processed: list[int] = []

    def process(items: list[int]) -> list[int]:
        processed.extend(items)
        return items

    async def run():
        batcher = MicroBatcher(process, max_batch=8, max_wait_ms=50)
        abandoned = asyncio.ensure_future(batcher.submit([1]))
        kept = asyncio.ensure_future(batcher.submit([2]))
        await asyncio.sleep(0)
        abandoned.cancel()  # the client went away before its batch ran
        assert await kept == [2]
        await batcher.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await batcher.submit([3])

    asyncio.run(run())
    assert processed == [2]


# --- loading and the command line -----------------------------------------------------------------


def test_serving_overrides_the_checkpoints_test_time_augmentation(tmp_path, colour_checkpoint):
    threads = torch.get_num_threads()
    try:
        classifier = Classifier.load(colour_checkpoint)
        classifier.recipe = (classifier.recipe or get_recipe("tutorial")).replace(tta=2)
        classifier.save(tmp_path / "tta2.pt")
        assert load_service_predictor(tmp_path / "tta2.pt", tta=2).metadata["tta"] == 2
        predictor = load_service_predictor(tmp_path / "tta2.pt")  # the plain network by default
        assert predictor.metadata["tta"] == 0
        images = np.random.default_rng(0).integers(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        plain = Classifier.load(colour_checkpoint)  # its recipe's level: 0
        np.testing.assert_allclose(predictor.predict(images), plain.predict(images), atol=1e-6)
        with pytest.raises(ValueError, match="tta must be 0, 1 or 2"):
            load_service_predictor(tmp_path / "tta2.pt", tta=3)
    finally:
        torch.set_num_threads(threads)


def test_the_traced_model_gives_the_eager_numbers_or_is_not_used(colour_checkpoint, monkeypatch):
    from cnnkit.inference.predictor import load_predictor
    from cnnkit.serving import traced

    eager = load_predictor(colour_checkpoint)
    eager.classifier.tta = 2  # the mirrored and shifted views too
    served = traced.trace_predictor(eager)
    assert isinstance(served, traced.TracedPredictor)
    for count in (1, 7, 40):  # any batch size, not only the one traced with
        images = np.random.default_rng(count).integers(0, 256, (count, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        np.testing.assert_allclose(served.predict(images), eager.predict(images), atol=1e-6)
    monkeypatch.setattr(traced.TracedPredictor, "predict", lambda self, images: eager.predict(images) + 0.1)
    assert traced.trace_predictor(eager) is eager  # a graph that disagrees is not served


def test_an_onnx_model_is_served_without_torch_in_the_request_path(tmp_path, colour_checkpoint):
    pytest.importorskip("onnxruntime")
    from cnnkit.export.onnx import export_onnx

    exported = export_onnx(colour_checkpoint, tmp_path / "colours.onnx", verify_data=None).path
    predictor = load_service_predictor(exported)
    with pytest.raises(ValueError, match="built in at export"):
        load_service_predictor(exported, tta=2)
    with start_server_thread(create_app(predictor)) as server:
        info = httpx.get(f"{server.url}/v1/model").json()
        assert (info["format"], info["backend"]) == ("onnx", "onnxruntime (cpu, fp32)")
        files = [("files", (f"{colour}.png", encode(colour))) for colour in COLOURS]
        results = httpx.post(f"{server.url}/v1/predict", files=files).json()["results"]
    assert [top_class(result) for result in results] == list(COLOURS)
    check = (
        "import sys; from cnnkit.serving import create_app, load_service_predictor; "
        f"create_app(load_service_predictor({str(exported)!r})); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", check], check=True)  # an ONNX service never loads torch


def test_cli_serve_passes_its_options_to_the_library(monkeypatch, tmp_path):
    import cnnkit.serving
    from cnnkit.cli import main

    calls = []
    monkeypatch.setattr(
        cnnkit.serving, "serve", lambda *arguments, **options: calls.append((arguments, options))
    )
    model = str(tmp_path / "model.onnx")
    arguments = ["serve", model, "--port", "9001", "--max-upload-mb", "2", "--max-batch", "64"]
    assert main([*arguments, "--batch-wait-ms", "5", "--tta", "0"]) == 0
    ((positional, options),) = calls
    assert positional == (model, "127.0.0.1", 9001)
    assert options["max_upload_mb"] == 2 and options["max_batch"] == 64
    assert options["batch_wait_ms"] == 5 and options["tta"] == 0 and options["threads"] is None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_cnnkit_serve_runs_on_loopback_and_stops_on_ctrl_c(colour_checkpoint):
    port = free_port()
    command = [sys.executable, "-m", "cnnkit", "serve", str(colour_checkpoint), "--port", str(port)]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=environment)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/v1/predict",
                    content=encode("yellow"),
                    headers={"content-type": "image/png"},
                )
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "cnnkit serve did not start"
                time.sleep(0.2)
        assert top_class(response.json()["results"][0]) == "yellow"
    finally:
        server.send_signal(signal.SIGINT)
        _, log = server.communicate(timeout=30)
    assert server.returncode == 0
    assert f"http://127.0.0.1:{port}" in log and "Serving tutorial" in log
