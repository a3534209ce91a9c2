"""Load test for ``cnnkit serve``: N concurrent clients on loopback for a fixed time, then figures.

    python benchmarks/serve_load.py                       # starts a server on an untrained `fast` model
    python benchmarks/serve_load.py --tta 0 --clients 32 --duration 20
    python benchmarks/serve_load.py --url http://127.0.0.1:8000   # drive a server already running

Without ``--model`` it writes a checkpoint of the default network (the ``fast`` recipe's, 10
classes, 32x32; untrained weights cost the same time as trained ones) whose recipe says TTA level 2,
as a trained one's does. The server runs in its own process (``python -m cnnkit serve``), so the
clients here share no interpreter with it. Each client is a plain HTTP/1.1 keep-alive connection
sending prebuilt requests (small PNG/JPEG images, encoded once); an answer counts as an error
unless it is a 200 whose JSON holds one prediction per image. The load stops by itself: after
``--duration`` seconds (plus ``--warmup``, not measured) or ``--requests`` requests.

It prints throughput (images/s, requests/s), latency percentiles, errors, the server's batching
counters and CPU time, and the machine's load average: other processes share these cores.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

REQUEST_TIMEOUT_S = 30.0
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class Measurements:
    latencies: list[float] = field(default_factory=list)
    images: int = 0
    errors: int = 0
    first_error: str = ""


def make_bodies(count: int, images_per_request: int, image_format: str, mode: str) -> list[tuple[bytes, str]]:
    """``count`` distinct request bodies with their Content-Type, images encoded once."""
    generator = np.random.default_rng(0)
    bodies = []
    for index in range(count):
        files = []
        for number in range(images_per_request):
            pixels = generator.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, image_format.upper())
            files.append((f"image{index}-{number}.{image_format}", buffer.getvalue()))
        if mode == "raw":
            bodies.append((files[0][1], f"image/{image_format}"))
            continue
        boundary = f"cnnkit-load-{index}"
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: image/{image_format}\r\n\r\n".encode()
            + data
            + b"\r\n"
            for name, data in files
        ]
        bodies.append(
            (b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}")
        )
    return bodies


def http_request(host: str, path: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def client(
    host: str,
    port: int,
    requests: list[bytes],
    images_per_request: int,
    offset: int,
    window: tuple[float, float],
    budget: list[int],
) -> Measurements:
    """One keep-alive connection sending requests back to back until the window or budget ends."""
    measured = Measurements()
    reader, writer = await asyncio.open_connection(host, port)
    index = offset
    try:
        while time.perf_counter() < window[1] and budget[0] > 0:
            request = requests[index % len(requests)]
            index += 1
            started = time.perf_counter()
            writer.write(request)
            try:
                status, body = await asyncio.wait_for(read_response(reader), REQUEST_TIMEOUT_S)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as error:
                measured.errors += 1
                measured.first_error = measured.first_error or f"{type(error).__name__}: {error}"
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            finished = time.perf_counter()
            if started < window[0]:  # warm-up: not measured
                continue
            budget[0] -= 1
            problem = check_answer(status, body, images_per_request)
            if problem:
                measured.errors += 1
                measured.first_error = measured.first_error or problem
            else:
                measured.images += images_per_request
            measured.latencies.append(finished - started)
    finally:
        writer.close()
    return measured


def check_answer(status: int, body: bytes, images_per_request: int) -> str:
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    results = json.loads(body)["results"]
    if len(results) != images_per_request or any("predictions" not in result for result in results):
        return f"unexpected answer: {body[:200]!r}"
    return ""


async def drive(url: str, arguments: argparse.Namespace) -> tuple[Measurements, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    bodies = make_bodies(64, arguments.images_per_request, arguments.format, arguments.mode)
    path = f"/v1/predict?top_k={arguments.top_k}"
    requests = [http_request(f"{host}:{port}", path, body, kind) for body, kind in bodies]
    start = time.perf_counter() + arguments.warmup
    window = (start, start + arguments.duration)
    budget = [arguments.requests or 2**62]
    runs = [
        client(host, port, requests, arguments.images_per_request, offset, window, budget)
        for offset in range(arguments.clients)
    ]
    results = await asyncio.gather(*runs)
    elapsed = min(time.perf_counter(), window[1]) - start
    total = Measurements()
    for result in results:
        total.latencies += result.latencies
        total.images += result.images
        total.errors += result.errors
        total.first_error = total.first_error or result.first_error
    return total, elapsed


def start_server(arguments: argparse.Namespace, folder: Path) -> tuple[subprocess.Popen, str]:
    model = arguments.model or write_default_checkpoint(folder / "fast.pt")
    port = arguments.port
    command = [sys.executable, "-m", "cnnkit", "serve", str(model), "--port", str(port)]
    command += ["--max-batch", str(arguments.max_batch), "--batch-wait-ms", str(arguments.batch_wait_ms)]
    if arguments.tta is not None:
        command += ["--tta", str(arguments.tta)]
    if arguments.threads:
        command += ["--threads", str(arguments.threads)]
    log = folder / "server.log"  # a file, not a pipe: a full pipe would stall the server
    process = subprocess.Popen(command, stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"The server exited:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return process, url
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("The server did not answer /healthz within 120 s.")


def write_default_checkpoint(path: Path) -> Path:
    from cnnkit.api import Classifier
    from cnnkit.recipes import get_recipe

    classifier = Classifier("fast", class_names=CLASS_NAMES, image_size=32)
    classifier.recipe = get_recipe("fast")  # TTA level 2, as a trained checkpoint has
    classifier.save(path)
    return path


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def report(arguments, measured: Measurements, elapsed: float, server: dict, cpu_share: float | None) -> dict:
    latencies = np.array(measured.latencies or [float("nan")]) * 1000
    requests = len(measured.latencies)
    figures = {
        "clients": arguments.clients,
        "images_per_request": arguments.images_per_request,
        "mode": arguments.mode,
        "format": arguments.format,
        "seconds": round(elapsed, 2),
        "requests": requests,
        "images_per_second": round(measured.images / elapsed, 1),
        "requests_per_second": round(requests / elapsed, 1),
        "latency_ms": {
            name: round(float(np.percentile(latencies, q)), 1)
            for name, q in (("p50", 50), ("p95", 95), ("p99", 99))
        },
        "latency_max_ms": round(float(latencies.max()), 1),
        "errors": measured.errors,
        "first_error": measured.first_error,
        "server": server,
        "server_cpu_cores_used": cpu_share,
        "server_cpu_ms_per_image": (
            round(cpu_share * 1000 * elapsed / measured.images, 3) if cpu_share and measured.images else None
        ),
        "load_average_1min": os.getloadavg()[0],
        "cores": os.cpu_count(),
    }
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="drive this running server instead of starting one")
    parser.add_argument("--model", help="checkpoint or .onnx to serve (default: an untrained fast model)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--tta", type=int, choices=[0, 1, 2], help="passed to cnnkit serve")
    parser.add_argument("--threads", type=int, help="passed to cnnkit serve")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--requests", type=int, help="stop after this many measured requests")
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--format", choices=["png", "jpeg"], default="png")
    parser.add_argument("--mode", choices=["multipart", "raw"], default="multipart")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    arguments = parser.parse_args(argv)
    if arguments.mode == "raw" and arguments.images_per_request != 1:
        parser.error("--mode raw sends one image a request")
    with tempfile.TemporaryDirectory() as folder:
        process, url = (None, arguments.url) if arguments.url else start_server(arguments, Path(folder))
        try:
            cpu_before = process_cpu_seconds(process.pid) if process else 0.0
            wall_before = time.perf_counter()
            before = get_json(url + "/healthz")["batching"]
            client_cpu_before = time.process_time()
            measured, elapsed = asyncio.run(drive(url, arguments))
            wall = time.perf_counter() - wall_before
            client_cpu = round((time.process_time() - client_cpu_before) / wall, 2)
            cpu_share = round((process_cpu_seconds(process.pid) - cpu_before) / wall, 2) if process else None
            after = get_json(url + "/healthz")["batching"]
            batches = after["batches"] - before["batches"]
            server = {
                "model": get_json(url + "/v1/model")["backend"],
                "tta": get_json(url + "/v1/model")["tta"],
                "batches": batches,
                "mean_batch": round((after["items"] - before["items"]) / batches, 1) if batches else 0,
                "largest_batch": after["largest_batch"],
            }
        finally:
            if process:
                process.send_signal(signal.SIGINT)
                process.wait(30)
    figures = report(arguments, measured, elapsed, server, cpu_share)
    figures["client_cpu_cores_used"] = client_cpu
    print(json.dumps(figures) if arguments.json else format_figures(figures))
    return 1 if measured.errors else 0


def format_figures(figures: dict) -> str:
    latency = figures["latency_ms"]
    server = figures["server"]
    return (
        f"{figures['clients']} clients, {figures['images_per_request']} image(s)/request "
        f"({figures['mode']}, {figures['format']}), {figures['seconds']} s measured\n"
        f"  throughput: {figures['images_per_second']:,.0f} images/s, {figures['requests_per_second']:,.0f} "
        f"requests/s ({figures['requests']:,} requests)\n"
        f"  latency: p50 {latency['p50']} ms, p95 {latency['p95']} ms, p99 {latency['p99']} ms, "
        f"max {figures['latency_max_ms']} ms\n"
        f"  errors: {figures['errors']}{' (' + figures['first_error'] + ')' if figures['errors'] else ''}\n"
        f"  server: {server['model']}, TTA {server['tta']}, {server['batches']:,} batches, mean "
        f"{server['mean_batch']} images, largest {server['largest_batch']}; CPU "
        f"{figures['server_cpu_cores_used']} cores ({figures['server_cpu_ms_per_image']} ms an image)\n"
        f"  machine: {figures['cores']} cores, load average {figures['load_average_1min']:.2f} (this "
        f"load's clients used {figures['client_cpu_cores_used']} cores)"
    )


if __name__ == "__main__":
    sys.exit(main())
