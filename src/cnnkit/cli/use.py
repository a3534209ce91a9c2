"""The commands that use a trained model: ``evaluate``, ``predict``, ``export`` and ``serve``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cnnkit.cli.common import add_runtime_arguments
from cnnkit.fileio import json_text
from cnnkit.runtime.constants import ONNX_SUFFIX

# --explain without DIR: a new folder (see inference.explanations.explanation_folder).
EXPLAIN_DEFAULT_FOLDER = ""


def add_parsers(commands: Any) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="per-class metrics, confusion matrix and worst errors of a checkpoint"
    )
    evaluate.add_argument("checkpoint")
    evaluate.add_argument(
        "--data", help="data to evaluate on (default: the run's own test or validation split)"
    )
    evaluate.add_argument(
        "--out", help="report folder (default: a new evaluate, evaluate2, ... beside the checkpoint)"
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    add_runtime_arguments(evaluate)

    evaluate.set_defaults(handler=_evaluate)

    predict = commands.add_parser(
        "predict",
        help="top classes (multi-label models: label sets) of images: files, folders, glob patterns, "
        ".zip archives",
    )
    predict.add_argument("checkpoint", help="a checkpoint, or an .onnx model from `cnnkit export` (no torch)")
    predict.add_argument(
        "images",
        nargs="+",
        metavar="PATH",
        help="an image, a folder (searched recursively), a glob pattern or a .zip (images inside)",
    )
    predict.add_argument("--top-k", type=int, help="classes per image (default: 5; single-label models)")
    predict.add_argument(
        "--threshold",
        type=float,
        metavar="T",
        help="multi-label models: one probability threshold in (0, 1) for every label (default: "
        "the model's own, chosen a label on its validation split; 0.5 where it has none)",
    )
    predict.add_argument(
        "--min-confidence",
        type=float,
        metavar="P",
        help="single-label models: an image whose top probability is below P is 'uncertain', its "
        "top classes best guesses, not an answer",
    )
    predict.add_argument(
        "--uncalibrated",
        action="store_true",
        help="the probabilities as trained, not scaled by the model's temperature (a checkpoint)",
    )
    predict.add_argument("--format", choices=["table", "json", "csv"], default="table")
    # Deprecated alias kept so scripts written against --json keep working.
    predict.add_argument(
        "--json", dest="format", action="store_const", const="json", help="same as --format json"
    )
    predict.add_argument("--output", metavar="FILE", help="write the results to FILE instead of stdout")
    predict.add_argument(
        "--force",
        action="store_true",
        help="let --output replace a file a run wrote (report.json, metrics.csv, ...) or any file "
        "but the model and the inputs",
    )
    predict.add_argument(
        "--batch-size", type=int, default=256, help="images decoded and classified at once (default: 256)"
    )
    predict.add_argument(
        "--tta",
        type=int,
        metavar="N",
        help="test-time augmentation level: 0 the image alone (one view, fastest), 1 and its mirror, "
        "2 and two one-pixel shifts (six views); default: the checkpoint's own. An .onnx model has "
        "its level built in at export and takes no other",
    )
    predict.add_argument(
        "--explain",
        nargs="?",
        const=EXPLAIN_DEFAULT_FOLDER,
        metavar="DIR",
        help="a checkpoint: write each image's Grad-CAM overlay (its top class; multi-label: its most "
        "probable label) as a PNG into DIR, a new or empty folder (--force: write into one holding "
        "files), and add its path to the results; without DIR a new explanations folder beside "
        "--output, or here (explanations2, ... when taken). Put it after the PATHs, or give DIR",
    )
    add_runtime_arguments(predict)

    predict.set_defaults(handler=_predict)

    _add_export_parser(commands)
    _add_serve_parser(commands)


def _evaluate(arguments: argparse.Namespace) -> int:
    from cnnkit.runs.evaluation import evaluate_checkpoint, format_evaluation

    result = evaluate_checkpoint(
        arguments.checkpoint,
        arguments.data,
        device=arguments.device,
        precision=arguments.precision or "auto",
        out=arguments.out,
    )
    print(json_text(result) if arguments.json else format_evaluation(result))
    return 0


def _predict(arguments: argparse.Namespace) -> int:
    from cnnkit.inference.batch_prediction import check_min_confidence, check_threshold, predict_paths
    from cnnkit.inference.explanations import check_explainable_path, explanation_folder
    from cnnkit.inference.prediction_files import (
        check_output_path,
        write_predictions,
        write_predictions_file,
    )
    from cnnkit.inference.predictor import load_predictor
    from cnnkit.inference.tta_level import check_tta

    check_threshold(arguments.threshold, name="--threshold")  # a bad value: refused before any work
    check_threshold(arguments.min_confidence, name="--min-confidence")
    check_tta(arguments.tta, name="--tta")
    if arguments.output:  # before any work: an output that would replace a file is refused
        check_output_path(arguments.output, arguments.checkpoint, arguments.images, arguments.force)
    explaining = arguments.explain is not None
    if explaining:
        check_explainable_path(arguments.checkpoint)
    if Path(arguments.checkpoint).suffix.lower() != ONNX_SUFFIX:  # torch runs it: this process's setup
        from cnnkit.runtime.device import configure_process

        # Freed memory kept among others: 690,000 fewer page faults over 10,000 images at TTA 0,
        # and the default TTA's 207 images/s became 242 (2-core AMD EPYC).
        configure_process()
    model = load_predictor(
        arguments.checkpoint,
        device=arguments.device,
        precision=arguments.precision or "auto",
        calibrated=not arguments.uncalibrated,
    )
    multi_label = model.task.multi_label
    check_threshold(arguments.threshold, multi_label, name="--threshold")
    check_min_confidence(arguments.min_confidence, multi_label, name="--min-confidence")
    if multi_label and arguments.top_k is not None:
        raise ValueError(
            "--top-k is for single-label models; a multi-label model gives every label at or above "
            f"its threshold (see --threshold). Received: top_k={arguments.top_k}"
        )
    folder = None
    if explaining:  # made once the model has loaded: a bad model leaves no empty folder behind
        given = arguments.explain if arguments.explain != EXPLAIN_DEFAULT_FOLDER else None
        folder = explanation_folder(given, arguments.output, arguments.force)
    results = predict_paths(
        model,
        arguments.images,
        5 if arguments.top_k is None else arguments.top_k,
        arguments.batch_size,
        threshold=arguments.threshold,
        min_confidence=arguments.min_confidence,
        explain=folder,
        tta=arguments.tta,
    )
    labels = model.class_names if multi_label else None  # the CSV's columns, one a label
    if arguments.output:
        summary = write_predictions_file(arguments.output, results, arguments.format, labels)
        overlays = f"; overlays in {folder}" if folder is not None else ""
        print(f"{summary.count} images, {summary.failed} failed, written to {arguments.output}{overlays}")
    else:
        summary = write_predictions(results, sys.stdout, arguments.format, labels)
    # Every result is out either way; the exit code tells scripts that some inputs failed.
    return 1 if summary.failed else 0


def _add_export_parser(commands) -> None:
    export = commands.add_parser(
        "export", help="write a checkpoint as an ONNX model (runs without torch), verified against PyTorch"
    )
    export.add_argument("checkpoint")
    export.add_argument("--format", choices=["onnx"], default="onnx")
    export.add_argument("--output", metavar="FILE", help="default: the checkpoint's path with .onnx")
    export.add_argument(
        "--force",
        action="store_true",
        help="let --output replace an existing .onnx (the default output is replaced without it)",
    )
    export.add_argument(
        "--input",
        choices=["uint8", "float"],
        default="uint8",
        help="uint8: (N, H, W, 3) RGB pixels (default); float: (N, 3, H, W) RGB in [0, 1]",
    )
    export.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="include the recipe's test-time augmentation in the graph (default: no, one view: 6x cheaper)",
    )
    export.add_argument(
        "--verify-data",
        metavar="PATH",
        help="images to verify on (default: the run's data if present, else synthetic images)",
    )
    export.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    export.add_argument(
        "--uncalibrated",
        action="store_true",
        help="output the probabilities as trained, without the model's temperature scaling",
    )
    int8 = export.add_argument_group("int8 (quantized, measured here, kept only where it pays)")
    int8.add_argument("--int8", action="store_true", help="quantize to int8 (static, per-channel weights)")
    int8.add_argument(
        "--calibration", metavar="PATH", help="images to calibrate on (default: the run's training split)"
    )
    int8.add_argument(
        "--data", metavar="PATH", help="labelled images to score on (default: the run's validation split)"
    )
    int8.add_argument(
        "--allow-accuracy-drop", action="store_true", help="keep int8 even if it loses more than 0.5 points"
    )
    int8.add_argument("--keep-int8", action="store_true", help="keep int8 even where it is not faster here")
    int8.add_argument("--threads", type=int, help="ONNX Runtime threads the timing uses (default: its own)")
    int8.add_argument("--seconds", type=float, default=1.0, help="timing a model and batch size (default: 1)")
    export.set_defaults(handler=_export)


def _export(arguments: argparse.Namespace) -> int:
    from cnnkit.export.onnx import export_onnx

    int8_only = ("calibration", "data", "allow_accuracy_drop", "keep_int8", "threads")
    given = [name for name in int8_only if getattr(arguments, name) not in (None, False)]
    if arguments.int8:
        return _export_int8(arguments)
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise ValueError(f"{flag} is an option of --int8 exports. Received: {flag} without --int8")

    result = export_onnx(
        arguments.checkpoint,
        arguments.output,
        input_format=arguments.input,
        tta=arguments.tta,
        verify_data=arguments.verify_data,
        exporter=arguments.exporter,
        force=arguments.force,
        calibrated=not arguments.uncalibrated,
    )
    print(
        f"Exported {arguments.checkpoint} to {result.path} ({result.size_bytes / 2**20:.1f} MiB, "
        f"opset {result.opset}, input {result.input_format}, TTA level {result.tta}) in "
        f"{result.export_seconds:.1f}s"
    )
    print(
        f"Verified on {result.verified_images} images ({result.verification_source}): ONNX Runtime "
        f"matches PyTorch within {result.max_difference:.1e} (tolerance {result.tolerance:g})"
    )
    return 0


def _export_int8(arguments: argparse.Namespace) -> int:
    from cnnkit.export.int8 import export_int8

    if arguments.input != "uint8" or arguments.exporter != "dynamo" or arguments.uncalibrated:
        raise ValueError(
            "--int8 exports the default graph (uint8 input, dynamo, calibrated probabilities). "
            "Received: --input, --exporter or --uncalibrated with --int8"
        )
    result = export_int8(
        arguments.checkpoint,
        arguments.output,
        calibration=arguments.calibration,
        data=arguments.data,
        tta=arguments.tta,
        threads=arguments.threads,
        seconds=arguments.seconds,
        allow_accuracy_drop=arguments.allow_accuracy_drop,
        keep_int8=arguments.keep_int8,
        force=arguments.force,
    )
    record = result.record
    print(result.reason)
    print(
        f"{result.kept} written to {result.path} ({result.path.stat().st_size / 2**20:.1f} MiB; "
        f"{record['quant_format']} layout; calibrated on {record['calibration_images']}, scored on "
        f"{record['accuracy_images']}; top-1 agreement {record['agreement']:.2%})"
    )
    return 0


def _add_serve_parser(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="an HTTP service and web page classifying images (POST /v1/predict, GET /) and, for a "
        "checkpoint, explaining them (POST /v1/explain: a Grad-CAM overlay)",
    )
    serve.add_argument("model", metavar="CHECKPOINT_OR_ONNX", help="a checkpoint or an .onnx model")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="0 to 65535 (default: 8000)")
    serve.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest request body, in MiB (default: 10)"
    )
    serve.add_argument(
        "--max-batch", type=int, default=256, help="most images per forward pass (default: 256)"
    )
    serve.add_argument(
        "--batch-wait-ms",
        type=float,
        default=2.0,
        help="how long a request waits for others to share its batch (default: 2)",
    )
    serve.add_argument(
        "--max-request-megapixels",
        type=float,
        default=256.0,
        help="most pixels the images of one request may hold together (default: 256)",
    )
    serve.add_argument(
        "--tta",
        type=int,
        choices=[0, 1, 2],
        help="test-time augmentation level for a checkpoint (default: 0, one view: 3-6x faster than 2)",
    )
    serve.add_argument("--threads", type=int, help="model threads (default: every core but one)")
    serve.add_argument(
        "--min-confidence",
        type=float,
        metavar="P",
        help="single-label models: answer 'uncertain' (with the top classes) below this top probability",
    )
    serve.add_argument(
        "--uncalibrated",
        action="store_true",
        help="a checkpoint's probabilities as trained, not scaled by its temperature",
    )
    serve.add_argument("--access-log", action="store_true", help="log a line per request")
    add_runtime_arguments(serve)
    serve.set_defaults(handler=_serve)


def _serve(arguments: argparse.Namespace) -> int:
    from cnnkit.serving import serve

    serve(
        arguments.model,
        arguments.host,
        arguments.port,
        max_upload_mb=arguments.max_upload_mb,
        max_batch=arguments.max_batch,
        batch_wait_ms=arguments.batch_wait_ms,
        max_request_megapixels=arguments.max_request_megapixels,
        tta=arguments.tta,
        device=arguments.device,
        precision=arguments.precision or "auto",
        threads=arguments.threads,
        access_log=arguments.access_log,
        min_confidence=arguments.min_confidence,
        calibrated=not arguments.uncalibrated,
    )
    return 0
