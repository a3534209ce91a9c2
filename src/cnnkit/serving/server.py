"""Running the service: load a model file, build the app, serve it with uvicorn.

One process, one event loop, the model in one thread (see ``batcher``): on a small CPU, more
uvicorn worker processes would each hold a model and fight over the same cores. The model gets
every core but one, which is left to the event loop (HTTP, JSON): measured on 2 busy cores, the
fast network at batch 16 ran 1,900 images/s with one PyTorch thread and 60 with two, whose
threads wait on each other whenever the loop (or another process) takes a core from one of them.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI

from cnnkit.inference.batch_prediction import check_min_confidence, check_threshold
from cnnkit.inference.onnx_runtime import OnnxClassifier
from cnnkit.inference.predictor import CheckpointPredictor, Predictor, load_predictor
from cnnkit.runtime.constants import ONNX_SUFFIX, TTA_LEVELS, available_cores
from cnnkit.serving.app import DEFAULT_MAX_REQUEST_PIXELS, DEFAULT_MAX_UPLOAD_BYTES, create_app
from cnnkit.serving.batcher import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def load_service_predictor(
    path: str | os.PathLike,
    tta: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    calibrated: bool = True,
) -> Predictor:
    """``load_predictor(path)`` set up for serving, and run once so the first request is not slow.

    ``tta``: test-time augmentation level for a checkpoint (``None``: 0, the plain network; the
    fast recipes' own level 2 costs 6 forward passes an image instead of 1: a service's choice
    to make explicitly). An ONNX model's level is fixed when it is exported, so another level is
    refused. ``threads``: the model's
    intra-op threads (PyTorch's or ONNX Runtime's; default: every core but one). ``calibrated``
    as ``load_predictor``'s.
    """
    if tta is not None and tta not in TTA_LEVELS:
        raise ValueError(f"tta must be 0, 1 or 2. Received: tta={tta}")
    threads = threads or max(1, available_cores() - 1)
    is_plain_onnx = device in ("auto", "cpu") and precision in ("auto", "fp32")
    if Path(path).suffix.lower() == ONNX_SUFFIX and is_plain_onnx and calibrated:
        predictor: Predictor = OnnxClassifier(path, threads=threads)
    else:  # a checkpoint, or an ONNX file with options load_predictor refuses in its own words
        predictor = load_predictor(path, device=device, precision=precision, calibrated=calibrated)
    own_level = int(predictor.metadata.get("tta", 0))
    if isinstance(predictor, CheckpointPredictor):
        predictor = _prepare_checkpoint(predictor, tta, threads)
    elif tta is not None and tta != own_level:
        raise ValueError(
            f"{path} has test-time augmentation level {own_level} built in at export; serve it as it "
            f"is, or export the checkpoint again (cnnkit export --no-tta). Received: tta={tta}"
        )
    predictor.predict(np.zeros((1, predictor.image_size, predictor.image_size, 3), np.uint8))
    return predictor


def _prepare_checkpoint(predictor: CheckpointPredictor, tta: int | None, threads: int) -> Predictor:
    """Threads, the TTA level, then the traced graph (torch is imported here: checkpoints only)."""
    from cnnkit.runtime.device import configure_threads
    from cnnkit.serving.traced import trace_predictor

    configure_threads(threads)
    tta = 0 if tta is None else tta  # deployment answers from one view unless asked otherwise
    predictor.classifier.tta = predictor.metadata["tta"] = tta
    return trace_predictor(predictor)


def check_port(port: int) -> int:
    """``port`` if a server can listen on it: 0 (any free port) to 65535."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer from 0 to 65535. Received: port={port!r}")
    return port


def serve(
    model_path: str | os.PathLike,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_BYTES / 2**20,
    max_batch: int = DEFAULT_MAX_BATCH,
    batch_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    max_request_megapixels: float = DEFAULT_MAX_REQUEST_PIXELS / 1e6,
    tta: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    access_log: bool = False,
    log_level: str = "info",
    min_confidence: float | None = None,
    calibrated: bool = True,
) -> None:
    """Serve the checkpoint or ``.onnx`` model at ``model_path`` over HTTP until interrupted.

    Binds to ``host`` (loopback by default: pass ``0.0.0.0`` to accept other machines). See
    ``create_app`` for the routes and ``load_service_predictor`` for ``tta`` and ``threads``.
    ``access_log`` logs a line per request (off by default: at thousands of requests a second
    it costs a noticeable share of the CPU). ``min_confidence``: single-label answers whose top
    probability is below it are marked uncertain. ``calibrated``: False serves a checkpoint's
    probabilities as trained, without its temperature.
    """
    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be > 0. Received: max_upload_mb={max_upload_mb}")
    if max_request_megapixels <= 0:
        raise ValueError(f"max_request_megapixels must be > 0. Received: {max_request_megapixels}")
    check_port(port)  # before the model loads: a bad port is one line, not uvicorn's traceback
    check_threshold(min_confidence, name="min_confidence")
    predictor = load_service_predictor(model_path, tta, device, precision, threads, calibrated)
    check_min_confidence(min_confidence, predictor.task.multi_label)
    app = create_app(
        predictor,
        min_confidence=min_confidence,
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        max_request_pixels=int(max_request_megapixels * 1e6),
    )
    # The configuration sets up uvicorn's logging, which this line then goes through.
    config = uvicorn.Config(app, host=host, port=port, access_log=access_log, log_level=log_level)
    metadata = predictor.metadata
    logging.getLogger("uvicorn.error").info(
        "Serving %s (%s, %d classes, %dx%d input, TTA level %s); API docs at /docs",
        metadata.get("model_name", model_path),
        metadata.get("source", "model"),
        len(predictor.class_names),
        predictor.image_size,
        predictor.image_size,
        metadata.get("tta", 0),
    )
    # A full garbage collection walks every object torch and the model made (200,000; 55-65 ms
    # measured), stalling every request in flight. They live as long as the server: exempt them.
    gc.collect()
    gc.freeze()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a server is meant to stop
        uvicorn.Server(config).run()


@dataclass
class ServerThread:
    """A uvicorn server running ``app`` in a background thread (tests, benchmarks, notebooks)."""

    server: uvicorn.Server
    thread: threading.Thread
    url: str

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to finish its requests and stop, and wait for it."""
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *_exception: object) -> None:
        self.stop()


def start_server_thread(
    app: FastAPI, host: str = DEFAULT_HOST, port: int = 0, timeout: float = 30.0
) -> ServerThread:
    """Serve ``app`` on ``host``:``port`` (0: a free port) in a thread; returns once it listens."""
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="cnnkit-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"The server did not start on {host}:{port}.")
        time.sleep(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    return ServerThread(server, thread, f"http://{host}:{bound_port}")
