"""Shared fixtures: an isolated cache folder and a small, learnable synthetic image set."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASS_NAMES = ["bottom_left", "bottom_right", "top_left", "top_right"]


@pytest.fixture(autouse=True)
def isolated_cnnkit_home(tmp_path_factory, monkeypatch):
    """Every test gets its own cache folder: nothing reads or writes the user's ~/.cache."""
    home = tmp_path_factory.mktemp("cnnkit_home")
    monkeypatch.setenv("CNNKIT_HOME", str(home))
    return home


def make_quadrant_images(count: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (count, size, size, 3) noisy images whose bright square's quadrant is the label.

    Learnable by any CNN in a few epochs; impossible to guess (chance is 25%).
    """
    generator = np.random.default_rng(seed)
    labels = np.arange(count) % len(CLASS_NAMES)
    images = generator.integers(0, 90, size=(count, size, size, 3), dtype=np.uint8)
    half = size // 2
    for index, label in enumerate(labels):
        top = 0 if label >= 2 else half
        left = 0 if label % 2 == 0 else half
        color = generator.integers(150, 256, size=3, dtype=np.uint8)
        images[index, top : top + half, left : left + half] = color
    return images, labels.astype(np.int64)


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray, extension: str = ".png") -> Path:
    """Write ``root/<class>/<index>.png`` for each image."""
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / CLASS_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:04d}{extension}")
    return root


@pytest.fixture
def quadrant_folder(tmp_path) -> Path:
    """A train/test image-folder data set of 16x16 PNGs, 4 classes."""
    train_images, train_labels = make_quadrant_images(160, seed=1)
    test_images, test_labels = make_quadrant_images(40, seed=2)
    write_image_folder(tmp_path / "quadrants" / "train", train_images, train_labels)
    write_image_folder(tmp_path / "quadrants" / "test", test_images, test_labels)
    return tmp_path / "quadrants"


class _LocalHandler(http.server.BaseHTTPRequestHandler):
    """Answers GET from ``server.routes``: path -> body, or (body, send Content-Length?)."""

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        body, send_length = route if isinstance(route, tuple) else (route, True)
        self.send_response(200)
        if send_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # HTTP/1.0: closing the connection marks the end of a body sent without a length.
        self.wfile.write(body)

    def log_message(self, *arguments: object) -> None:
        """Keep test output quiet."""


@pytest.fixture
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    """A local HTTP server standing in for the internet: tests set ``routes`` and read ``requests``."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LocalHandler)
    httpd.routes = {}
    httpd.requests = []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def make_quadrant_sets(count: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label: uint8 noisy images with any number of bright quadrants (none to all four), and
    their multi-hot (count, 4) labels, one column a quadrant of ``CLASS_NAMES``."""
    generator = np.random.default_rng(seed)
    labels = (generator.random((count, len(CLASS_NAMES))) < 0.4).astype(np.int64)
    images = generator.integers(0, 90, size=(count, size, size, 3), dtype=np.uint8)
    half = size // 2
    for index, row in enumerate(labels):
        for label in np.flatnonzero(row):
            top = 0 if label >= 2 else half
            left = 0 if label % 2 == 0 else half
            images[index, top : top + half, left : left + half] = generator.integers(150, 256, size=3)
    return images, labels


def write_label_table_data(
    root: Path, images: np.ndarray, labels: np.ndarray, folder: str = "images"
) -> Path:
    """``root/<folder>/<index>.png`` for each image and ``root/labels.csv`` naming their labels."""
    rows = ["image,labels"]
    for index, (image, row) in enumerate(zip(images, labels, strict=True)):
        name = f"{folder}/{index:04d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / name)
        rows.append(f"{name},{' '.join(CLASS_NAMES[label] for label in np.flatnonzero(row))}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root
