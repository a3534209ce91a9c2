"""What hostile input costs (issue 14): a zip bomb for `predict` and `train`, huge images for the service.

Runs cnnkit from a source tree (``--source``, default this checkout's ``src``) in fresh processes,
so an older tree can be measured against this one in the same run on the same machine:

    python benchmarks/hostile_input.py [--source path/to/other/src] [--bomb-gib 1] [--big-images 40]

1. A zip of ~1 MB holding two real images and ``cat/zeros.jpg``, 1 GiB of zeros: `cnnkit predict`
   and `cnnkit train` (tutorial recipe, one epoch) on it, with their peak resident memory
   (``/usr/bin/time``'s maximum resident set) and wall time.
2. `cnnkit serve` on a small model: one request of ``--big-images`` single-colour 7990x7990 PNGs
   (64 megapixels each, a few MB in all), and, 0.5 s later, a request of one small PNG: each
   one's status and seconds.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from PIL import Image

DEFAULT_SOURCE = Path(__file__).resolve().parents[1] / "src"
MAKE_MODEL = (
    "import sys; from cnnkit.api import Classifier; "
    "Classifier('tutorial', class_names=['cat', 'dog'], image_size=32, device='cpu').save(sys.argv[1])"
)


def png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def write_bomb(path: Path, gibibytes: float) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("cat/1.png", png((32, 32), (200, 40, 40)))
        archive.writestr("dog/1.png", png((32, 32), (40, 40, 200)))
        with archive.open("cat/zeros.jpg", "w", force_zip64=True) as member:
            block = bytes(2**20)
            for _ in range(int(gibibytes * 1024)):
                member.write(block)


def timed(command: list[str], environment: dict) -> dict:
    """Exit code, wall seconds and peak resident memory (MiB) of ``command``."""
    started = time.perf_counter()
    result = subprocess.run(
        ["/usr/bin/time", "-v", *command], env=environment, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "\t" not in line and line]
    return {
        "code": result.returncode,
        "seconds": seconds,
        "peak_mib": int(peak.group(1)) / 1024 if peak else float("nan"),
        "last_line": lines[-1][:150] if lines else "",
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_requests(model: Path, environment: dict, big_images: int) -> dict:
    import httpx

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cnnkit", "serve", str(model), "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        big = png((7990, 7990), (30, 120, 200))
        files = [("files", (f"{index}.png", big, "image/png")) for index in range(big_images)]
        outcome: dict = {"body_mib": len(big) * big_images / 2**20}

        def send(name: str, parts: list) -> None:
            started = time.perf_counter()
            response = httpx.post(url + "/v1/predict", files=parts, timeout=600)
            outcome[name] = (response.status_code, time.perf_counter() - started)

        sender = threading.Thread(target=send, args=("big", files))
        sender.start()
        time.sleep(0.5)
        send("small", [("files", ("small.png", png((64, 64), (200, 40, 40)), "image/png"))])
        sender.join()
        return outcome
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source", default=str(DEFAULT_SOURCE), help="the src folder of the cnnkit to measure"
    )
    parser.add_argument("--bomb-gib", type=float, default=1.0)
    parser.add_argument("--big-images", type=int, default=40)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        environment = {**os.environ, "PYTHONPATH": arguments.source, "CNNKIT_HOME": str(folder / "home")}
        model = folder / "model.pt"
        subprocess.run([sys.executable, "-c", MAKE_MODEL, str(model)], env=environment, check=True)
        bomb = folder / "bomb.zip"
        write_bomb(bomb, arguments.bomb_gib)
        print(f"cnnkit from {arguments.source}")
        print(f"zip bomb: {bomb.stat().st_size / 2**20:.2f} MiB holding {arguments.bomb_gib:g} GiB of zeros")
        cnnkit = [sys.executable, "-m", "cnnkit"]
        jobs = {
            "predict": [*cnnkit, "predict", str(model), str(bomb)],
            "train": [*cnnkit, "train", "--data", str(bomb), "--recipe", "tutorial", "--epochs", "1",
                      "--val-split", "0", "--out", str(folder / "runs"), "--quiet", "--img-size", "32"],
        }  # fmt: skip
        for name, command in jobs.items():
            result = timed(command, environment)
            print(
                f"  {name}: exit {result['code']}, {result['seconds']:.1f} s, "
                f"peak RSS {result['peak_mib']:.0f} MiB"
                f"  | {result['last_line']}"
            )
        outcome = serve_requests(model, environment, arguments.big_images)
        print(
            f"service: one request of {arguments.big_images} x 7990x7990 PNG ({outcome['body_mib']:.1f} MiB)"
        )
        for name in ("big", "small"):
            status, seconds = outcome[name]
            print(f"  {name} request: HTTP {status} in {seconds:.2f} s")


if __name__ == "__main__":
    main()
