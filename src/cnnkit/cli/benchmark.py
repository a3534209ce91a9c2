"""``cnnkit benchmark MODEL``: latency, images a second and accuracy of a model in every format
this machine runs it in (PyTorch fp32 / bf16, ONNX fp32 / int8, CUDA when present)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(commands: Any) -> None:
    benchmark = commands.add_parser(
        "benchmark",
        help="time a model in every format this machine runs (PyTorch, ONNX, int8, CUDA) and score each",
        description="Time MODEL (a checkpoint or an .onnx file) at each batch size in every format this "
        "machine runs it in, score each on --data, and write benchmark.json, benchmark.csv and "
        "benchmark.png. A format that cannot run here is listed with the reason.",
    )
    benchmark.add_argument("model", help="a checkpoint, or an .onnx model")
    benchmark.add_argument(
        "--data", help="labelled images to score on and time with (its test split, else all of it)"
    )
    benchmark.add_argument(
        "--batch-sizes",
        default="1,64",
        metavar="N,N",
        help="batch sizes to time, comma-separated (default: 1,64)",
    )
    benchmark.add_argument(
        "--threads", type=int, help="intra-op threads of PyTorch and ONNX Runtime (default: theirs)"
    )
    benchmark.add_argument(
        "--seconds", type=float, default=2.0, help="time spent timing each format and batch size (default: 2)"
    )
    benchmark.add_argument(
        "--tta",
        action="store_true",
        help="every format with the recipe's test-time augmentation (default: the plain network, as export)",
    )
    benchmark.add_argument("--limit", type=int, help="score on at most this many images of --data")
    benchmark.add_argument(
        "--out", metavar="DIR", help="results folder, new or empty (default: runs/benchmark)"
    )
    benchmark.add_argument("--json", action="store_true", help="print the results as JSON")
    benchmark.set_defaults(handler=_benchmark)


def _batch_sizes(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"--batch-sizes must be whole numbers separated by commas, e.g. 1,64. Received: {text!r}"
        ) from None


def _benchmark(arguments: argparse.Namespace) -> int:
    from cnnkit.fileio import json_text
    from cnnkit.runs.benchmark import benchmark, format_benchmark

    summary = benchmark(
        arguments.model,
        data=arguments.data,
        batch_sizes=_batch_sizes(arguments.batch_sizes),
        threads=arguments.threads,
        seconds=arguments.seconds,
        tta=arguments.tta,
        out=arguments.out,
        limit=arguments.limit,
    )
    print(json_text(summary) if arguments.json else format_benchmark(summary))
    return 0
