"""int8 against float32 ONNX on this CPU (issue 23), in one run on one machine.

    python benchmarks/int8.py [--checkpoint best.pt] [--data /tmp/cifar10-calibration/data] [--threads 2]

Two models: the default CIFAR-10 model (a trained ``best.pt``: by default the one
``benchmarks/calibration.py`` trains on 40,000 images of the shared zip, whose test/ folder holds
the 10,000 it never saw) and a ResNet-18 at 224 px with **random weights** (speed only: its
accuracy means nothing). Each is exported as ``cnnkit export`` writes it (the plain network),
quantized as ``cnnkit export --int8`` does (QDQ and QOperator; 256 calibration images, the CIFAR
model's from its training split, ResNet-18's CIFAR images enlarged to 224), and timed by ONNX
Runtime at batch 1 and 64 (median batch latency, ``--seconds`` a measurement, the formats
interleaved over ``--rounds`` rounds so that a noisy minute hits all alike). The CIFAR model is
scored on every test image, fp32 and int8. Prints a Markdown table with the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from cnnkit.api import Classifier
from cnnkit.checkpoint import load_checkpoint
from cnnkit.data import load_dataset
from cnnkit.export.int8 import agreement, measure_throughput
from cnnkit.export.onnx import export_onnx
from cnnkit.export.quantize import QDQ, QOPERATOR, quantize_onnx
from cnnkit.runs.evaluation import match_labels
from cnnkit.runs.splits import training_splits
from machine import cpu_description

BATCH_SIZES = (1, 64)


def cifar_models(checkpoint: Path, data: Path, work: Path) -> tuple[dict[str, bytes], np.ndarray, np.ndarray]:
    """{"fp32", "int8 qdq", "int8 qoperator"}, the test images and their labels."""
    saved = load_checkpoint(checkpoint)
    splits = load_dataset(data, image_size=saved.resize_size, progress=False)
    train, _ = training_splits(splits, saved.recipe)
    calibration = train.images[:: len(train) // 256][:256].numpy()
    fp32 = export_onnx(checkpoint, work / "cifar.onnx", force=True).path.read_bytes()
    models = {
        "fp32": fp32,
        **{f"int8 {name}": quantize_onnx(fp32, calibration, name) for name in (QDQ, QOPERATOR)},
    }
    labels = match_labels(splits.test, saved.class_names, False).numpy()
    return models, splits.test.images.numpy(), labels


def resnet_models(data: Path, work: Path) -> tuple[dict[str, bytes], np.ndarray]:
    """ResNet-18 at 224 px, random weights (seeded), and 64 CIFAR images enlarged to time it on."""
    torch.manual_seed(0)
    classes = [f"class{index}" for index in range(10)]
    classifier = Classifier("resnet18", class_names=classes, image_size=224, device="cpu", precision="fp32")
    classifier.save(work / "resnet18.pt")
    fp32 = export_onnx(
        work / "resnet18.pt", work / "resnet18.onnx", verify_count=4, force=True
    ).path.read_bytes()
    images = load_dataset(data, image_size=32, progress=False).test.images[:256]
    enlarged = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2).float(), size=224, mode="bilinear")
    pixels = enlarged.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    models = {
        "fp32": fp32,
        **{f"int8 {name}": quantize_onnx(fp32, pixels[:128], name) for name in (QDQ, QOPERATOR)},
    }
    return models, pixels[:64]


def timed(models: dict[str, bytes], images: np.ndarray, threads: int, seconds: float, rounds: int) -> dict:
    """{model: {batch: median images/s over rounds}}, the models interleaved round by round."""
    rates: dict[str, dict[int, list[float]]] = {name: {size: [] for size in BATCH_SIZES} for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            for size, figures in measure_throughput(model, images, BATCH_SIZES, threads, seconds).items():
                rates[name][size].append(figures.images_per_second)
    return {
        name: {size: statistics.median(values) for size, values in by_size.items()}
        for name, by_size in rates.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=Path("/tmp/cifar10-calibration/runs/default/best.pt")
    )
    parser.add_argument("--data", type=Path, default=Path("/tmp/cifar10-calibration/data"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    if not options.checkpoint.is_file():
        raise SystemExit(f"No {options.checkpoint}: run benchmarks/calibration.py first (it trains it).")
    torch.set_num_threads(options.threads)
    print(f"CPU: {cpu_description()}; ONNX Runtime, {options.threads} intra-op threads")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        cifar, test_images, labels = cifar_models(options.checkpoint, options.data, work)
        resnet, resnet_images = resnet_models(options.data, work)
        print("| model | format | images/s batch 1 | images/s batch 64 | vs fp32 (1 / 64) | test accuracy |")
        print("|---|---|---|---|---|---|")
        for title, models, images in (
            ("CIFAR-10 default (trained), 32 px", cifar, test_images[:64]),
            ("ResNet-18 (random weights), 224 px", resnet, resnet_images),
        ):
            rates = timed(models, images, options.threads, options.seconds, options.rounds)
            for name in models:
                score = "-"
                if models is cifar:
                    scores = agreement(
                        models["fp32"], models[name], test_images, labels, threads=options.threads
                    )
                    score = f"{scores.int8_accuracy:.4f} (agreement {scores.agreement:.4f})"
                ratio = " / ".join(f"{rates[name][size] / rates['fp32'][size]:.2f}x" for size in BATCH_SIZES)
                speeds = f"{rates[name][1]:,.0f} | {rates[name][64]:,.0f}"
                print(f"| {title} | {name} | {speeds} | {ratio} | {score} |", flush=True)


if __name__ == "__main__":
    main()
