"""``cnnkit benchmark MODEL``: how fast, and how accurate, a model is in every format this machine
runs it in, measured here.

A checkpoint runs as PyTorch fp32, PyTorch bf16 (where the CPU computes bf16 natively), ONNX fp32
(exported and verified as ``cnnkit export`` does) and ONNX int8 (quantized as ``export --int8``
does, calibrated on ``data``'s images or the run's own), and on CUDA when there is a GPU. An
``.onnx`` file runs as it is, and as int8 when it is float32 and ``data`` is given to calibrate on.
Each format is timed at each batch size (``inference.throughput``: median and 99th-percentile
latency of a batch, images a second) on the same images, and scored on ``data`` (top-1 accuracy).
A format that cannot run here is listed with the reason, not left out silently.

Every format runs the same model: the same test-time augmentation (``tta``: the plain network by
default, as ``export`` writes it; True: the recipe's), offset and calibration.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.inference.throughput import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_SECONDS,
    DEFAULT_WARMUP,
    Throughput,
    batch_of,
    check_batch_sizes,
    check_timing,
    time_batches,
)
from cnnkit.runtime.constants import ONNX_SUFFIX

CALIBRATION_COUNT = 256  # images int8's activation ranges are taken from
TIMING_IMAGES = 64  # distinct images the timed batches are made of
MAX_RUNS = 10_000  # timed calls a format and batch size at most
BENCHMARK_FILES = {"json": "benchmark.json", "csv": "benchmark.csv", "plot": "benchmark.png"}


@dataclass
class FormatRunner:
    """One way of running the model: ``predict`` maps uint8 ``(N, H, W, 3)`` pixels (at the model's
    ``image_size``) to probabilities ``(N, classes)``."""

    name: str  # "pytorch-fp32", "onnx-int8", "cuda-bf16", ...
    device: str
    predict: Callable[[np.ndarray], np.ndarray]
    note: str = ""


@dataclass
class FormatResult:
    """A format's figures (``throughput`` a batch size, ``accuracy`` on the data), or why it did not run."""

    name: str
    device: str = "cpu"
    throughput: dict[int, Throughput] = field(default_factory=dict)
    accuracy: float | None = None
    note: str = ""
    skipped: str | None = None

    def rows(self) -> list[dict[str, Any]]:
        """One flat row a batch size (one row saying why, if skipped)."""
        base = {"format": self.name, "device": self.device, "accuracy": self.accuracy}
        if self.skipped is not None:
            return [{**base, "batch_size": None, "skipped": self.skipped}]
        return [
            {**base, "batch_size": size, **figures.to_dict(), "note": self.note}
            for size, figures in self.throughput.items()
        ]


def benchmark(
    model: str | os.PathLike,
    data: str | os.PathLike | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    threads: int | None = None,
    seconds: float = DEFAULT_SECONDS,
    tta: bool = False,
    out: str | os.PathLike | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Measure ``model`` (a checkpoint or an ``.onnx`` file) in every format this machine runs.

    ``data``: labelled images (a class folder, a zip, the train/val/test layout: its test split,
    else all of it) to score each format on and to time with; without it, synthetic images are
    timed and accuracy is not measured. ``limit``: score on at most this many images.
    ``threads``: intra-op threads of PyTorch and ONNX Runtime (default: each library's own).
    ``seconds``: timed a batch size and format. The
    results are written to ``out`` (new or empty; default a new ``runs/benchmark``):
    ``benchmark.json``, ``benchmark.csv`` and ``benchmark.png``. Returns what the JSON holds.
    """
    from cnnkit.runs.folders import output_folder
    from cnnkit.runtime.cpu import cpu_info

    sizes = check_batch_sizes(batch_sizes)
    check_timing(seconds, DEFAULT_WARMUP, MAX_RUNS)  # refused before any work, in one line
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an integer >= 1. Received: limit={limit!r}")
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}: give a checkpoint or an .onnx file")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an integer >= 1. Received: threads={threads!r}")
    made = out is None or not Path(out).exists()
    folder = output_folder(out, "runs", "benchmark", "benchmark", "or no --out for a new runs/benchmark")
    try:
        with tempfile.TemporaryDirectory(prefix="cnnkit-benchmark-") as work:
            images, labels, size_note = _data(path, data, limit)
            timing = images[:TIMING_IMAGES] if images is not None else None
            runners, skipped = _runners(path, Path(work), images, tta, threads)
            if timing is None:
                timing = _synthetic(path)
            results = [_measure(runner, timing, sizes, seconds, images, labels) for runner in runners]
    except BaseException:
        if made and not any(folder.iterdir()):  # a failed benchmark leaves no empty folder behind
            folder.rmdir()
        raise
    results += skipped
    summary = {
        "model": str(path),
        "data": str(data) if data is not None else None,
        "images_scored": 0 if labels is None else len(labels),
        "tta": tta,
        "threads": threads,
        "seconds": seconds,
        "cpu": cpu_info(),
        "note": size_note,
        "results": [row for result in results for row in result.rows()],
    }
    summary["files"] = write_benchmark_folder(folder, summary)
    return summary


def _model_facts(path: Path) -> dict[str, Any]:
    """Class names, sizes and task of the model file, from its own description."""
    if path.suffix.lower() == ONNX_SUFFIX:
        from cnnkit.inference.onnx_runtime import OnnxClassifier

        metadata = OnnxClassifier(path).metadata
        size = int(metadata["image_size"])
        return {
            "class_names": list(metadata["class_names"]),
            "image_size": size,
            "resize_size": int(metadata.get("resize_size") or size),
            "multi_label": metadata.get("task") == "multi_label",
        }
    from cnnkit.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    return {
        "class_names": list(checkpoint.class_names),
        "image_size": int(checkpoint.image_size),
        "resize_size": int(checkpoint.resize_size),
        "multi_label": checkpoint.task == "multi_label",
    }


def _data(path: Path, data: str | os.PathLike | None, limit: int | None) -> tuple[Any, Any, str]:
    """(uint8 images at the model's size, class indices or None, a note) from ``data``."""
    if data is None:
        return None, None, "no --data: synthetic images timed, accuracy not measured"
    import torch

    from cnnkit.data import load_dataset
    from cnnkit.export.verification_images import spread_indices
    from cnnkit.runs.evaluation import match_labels
    from cnnkit.runtime.normalization import center_crop_images

    facts = _model_facts(path)
    splits = load_dataset(data, image_size=facts["resize_size"])
    part, split = next(
        (part, name)
        for part, name in ((splits.test, "test"), (splits.validation, "validation"), (splits.train, "all"))
        if part is not None
    )
    total = len(part)
    count = total if limit is None else min(limit, total)
    if count < total:  # spread over the split: folders come sorted by class
        part = part.subset(torch.from_numpy(spread_indices(total, count)))
    images = part.images
    if facts["resize_size"] != facts["image_size"]:
        images = center_crop_images(images, facts["image_size"])
    images = np.ascontiguousarray(np.asarray(images))
    if facts["multi_label"]:
        return images, None, f"{split} split of {data}: multi-label, so accuracy is not measured"
    labels = match_labels(part, facts["class_names"], False).numpy()
    spread = f" spread over its {total:,}" if count < total else ""
    return images, labels, f"scored on {count:,} images{spread}, the {split} split of {data}"


def _synthetic(path: Path) -> np.ndarray:
    size = _model_facts(path)["image_size"]
    generator = np.random.default_rng(0)
    return generator.integers(0, 256, (TIMING_IMAGES, size, size, 3), dtype=np.uint8)


def _measure(
    runner: FormatRunner,
    timing: np.ndarray,
    sizes: tuple[int, ...],
    seconds: float,
    images: np.ndarray | None,
    labels: np.ndarray | None,
) -> FormatResult:
    """Time ``runner`` at each batch size and score it; a failure is the result's ``skipped``."""
    result = FormatResult(runner.name, runner.device, note=runner.note)
    try:
        for size in sizes:
            batch = batch_of(timing, size)
            result.throughput[size] = time_batches(lambda batch=batch: runner.predict(batch), size, seconds)
        if images is not None and labels is not None:
            step = max(sizes)
            predicted = np.concatenate(
                [
                    runner.predict(images[start : start + step]).argmax(1)
                    for start in range(0, len(images), step)
                ]
            )
            result.accuracy = float((predicted == labels).mean())
    except (RuntimeError, ValueError, MemoryError) as error:  # this format only: the others go on
        return FormatResult(runner.name, runner.device, skipped=f"failed: {str(error).splitlines()[0]}")
    return result


def _runners(
    path: Path, work: Path, images: np.ndarray | None, tta: bool, threads: int | None
) -> tuple[list[FormatRunner], list[FormatResult]]:
    """The formats ``path`` runs in here, and those it cannot, each with the reason."""
    runners: list[FormatRunner] = []
    skipped: list[FormatResult] = []
    calibration = _calibration_images(path, images)
    if path.suffix.lower() == ONNX_SUFFIX:
        fp32 = _onnx_runner(path, threads, "")
        runners.append(fp32)
        if fp32.name == "onnx-int8":
            return runners, skipped
        if calibration is None:
            skipped.append(
                FormatResult("onnx-int8", skipped="give --data: int8 is calibrated on real images")
            )
            return runners, skipped
    else:
        runners += _torch_runners(path, tta, threads, skipped)
        try:
            from cnnkit.export.onnx import export_onnx

            fp32_path = work / "fp32.onnx"
            export_onnx(path, fp32_path, tta=tta, force=True)
        except ImportError as error:  # the export extra is not installed
            reason = f"needs the export extra (pip install 'cnnkit[export]'): {error}"
            skipped += [FormatResult("onnx-fp32", skipped=reason), FormatResult("onnx-int8", skipped=reason)]
            return runners, skipped
        runners.append(_onnx_runner(fp32_path, threads, "exported as cnnkit export writes it"))
        path = fp32_path
    runners.append(_int8_runner(path, work, calibration, threads))
    return runners, skipped


def _onnx_runner(path: Path, threads: int | None, note: str) -> FormatRunner:
    from cnnkit.inference.onnx_runtime import OnnxClassifier

    classifier = OnnxClassifier(path, threads=threads)
    name = "onnx-int8" if classifier.metadata.get("int8") else "onnx-fp32"
    return FormatRunner(name, "cpu", lambda pixels: classifier.predict(pixels, batch_size=len(pixels)), note)


def _calibration_images(path: Path, images: np.ndarray | None) -> tuple[np.ndarray, str] | None:
    """What int8 is calibrated on: a checkpoint's own training images where its run's data is
    here (as ``export --int8``), else images spread over ``--data`` (which are also scored: say
    so), else a checkpoint's synthetic stand-ins; None for an ``.onnx`` file without ``--data``."""
    if path.suffix.lower() != ONNX_SUFFIX:
        from cnnkit.checkpoint import load_checkpoint
        from cnnkit.export.verification_images import run_training_images, synthetic_images

        checkpoint = load_checkpoint(path)
        training = run_training_images(checkpoint, CALIBRATION_COUNT)
        if training is not None:
            return training, "the run's training split"
        if images is None:
            return synthetic_images(CALIBRATION_COUNT, checkpoint.image_size), "synthetic images"
    if images is None:
        return None
    from cnnkit.export.verification_images import spread_indices

    return images[spread_indices(len(images), CALIBRATION_COUNT)], "--data, also scored"


def _int8_runner(
    fp32_path: Path, work: Path, calibration: tuple[np.ndarray, str], threads: int | None
) -> FormatRunner:
    from cnnkit.export.int8 import quantize_onnx

    images, source = calibration
    int8_path = work / "int8.onnx"
    int8_path.write_bytes(quantize_onnx(fp32_path, images))
    runner = _onnx_runner(int8_path, threads, f"calibrated on {len(images)} images ({source})")
    runner.name = "onnx-int8"
    return runner


def _torch_runners(
    path: Path, tta: bool, threads: int | None, skipped: list[FormatResult]
) -> list[FormatRunner]:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    from cnnkit.checkpoint import load_checkpoint
    from cnnkit.runtime.device import cpu_supports_bf16

    checkpoint = load_checkpoint(path)
    runners = [_torch_runner(checkpoint, path, tta, torch.float32, "cpu")]
    if cpu_supports_bf16():
        runners.append(_torch_runner(checkpoint, path, tta, torch.bfloat16, "cpu"))
    else:
        reason = "this CPU has no native bf16 (AVX512-BF16 or AMX): emulated, it is slower than fp32"
        skipped.append(FormatResult("pytorch-bf16", skipped=reason))
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        runners.append(_torch_runner(checkpoint, path, tta, torch.float32, "cuda"))
        runners.append(
            _torch_runner(checkpoint, path, tta, torch.bfloat16 if bf16 else torch.float16, "cuda")
        )
    else:
        skipped.append(FormatResult("cuda", device="cuda", skipped="no CUDA device here"))
    return runners


def _torch_runner(checkpoint: Any, path: Path, tta: bool, precision: Any, device: str) -> FormatRunner:
    """The very module the service traces and ``Classifier.predict`` runs, at ``precision``."""
    import torch

    from cnnkit.runtime.device import precision_name
    from cnnkit.runtime.pixel_classifier import PixelClassifier, WithProbabilities
    from cnnkit.tasks import get_task

    network = checkpoint.build_model(path).eval().to(device, memory_format=torch.channels_last)
    module = WithProbabilities(
        PixelClassifier.for_checkpoint(network, checkpoint, checkpoint.tta if tta else 0, precision),
        task=get_task(checkpoint.task),
    ).eval()

    def predict(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(pixels).to(device)).float().cpu().numpy()

    name = f"{'pytorch' if device == 'cpu' else 'cuda'}-{precision_name(precision)}"
    return FormatRunner(name, device, predict)


def write_benchmark_folder(folder: Path, summary: dict[str, Any]) -> dict[str, str]:
    """``benchmark.json``, ``benchmark.csv`` (a row a format and batch size) and ``benchmark.png``."""
    import csv
    import io

    from cnnkit.fileio import atomic_write_text, json_text
    from cnnkit.reports.speed import plot_throughput

    files = {key: str(folder / name) for key, name in BENCHMARK_FILES.items()}
    atomic_write_text(files["json"], json_text({**summary, "files": files}))
    columns = ["format", "device", "batch_size", "images_per_second", "latency_p50_ms", "latency_p99_ms"]
    columns += ["runs", "accuracy", "note", "skipped"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary["results"])
    atomic_write_text(files["csv"], text.getvalue())
    plot_throughput(files["plot"], summary["results"], title=summary["cpu"]["model"])
    return files


def format_benchmark(summary: dict[str, Any]) -> str:
    """The table ``cnnkit benchmark`` prints: a row a format and batch size, then the skipped."""
    cpu = summary["cpu"]
    header = ("format", "device", "batch", "images/s", "p50 ms", "p99 ms", "accuracy")
    lines = [
        f"{summary['model']} on {cpu['model']} ({', '.join(cpu['flags']) or 'no AVX2'}); {summary['note']}",
        "{:<14} {:<6} {:>5} {:>10} {:>9} {:>9} {:>9}".format(*header),
    ]
    for row in summary["results"]:
        if row.get("skipped"):
            continue
        accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        lines.append(
            f"{row['format']:<14} {row['device']:<6} {row['batch_size']:>5} "
            f"{row['images_per_second']:>10,.1f} {row['latency_p50_ms']:>9.3f} "
            f"{row['latency_p99_ms']:>9.3f} {accuracy:>9}"
        )
    lines += [
        f"{row['format']}: not measured, {row['skipped']}" for row in summary["results"] if row.get("skipped")
    ]
    lines.append(f"Files: {summary['files']['json']}, {summary['files']['plot']}")
    return "\n".join(lines)
