"""``cnnkit train|evaluate|predict|export|serve|summary|models``: parses arguments, calls the library."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from cnnkit import __version__
from cnnkit.engine.interrupt import TrainingInterrupted


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnkit", description="Train, evaluate and use CNN image classifiers."
    )
    parser.add_argument("--version", action="version", version=f"cnnkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model into runs/<name>/")
    train.add_argument(
        "--data",
        help="cifar10 (the default, downloaded), its .tar.gz or cifar-10-batches-py folder, "
        "or an image folder or .zip",
    )
    train.add_argument("--recipe", default=None, help="named hyperparameters (see `cnnkit models`)")
    train.add_argument("--model", default=None, help="model name (default: the recipe's)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float, help="learning rate")
    train.add_argument(
        "--val-split", type=float, help="validation share, stratified (0 trains on everything)"
    )
    train.add_argument("--img-size", type=int, help="resize images to this square size")
    train.add_argument("--seed", type=int)
    train.add_argument(
        "--patience",
        type=int,
        help="stop after N epochs without a better --monitor value (restores the best)",
    )
    train.add_argument(
        "--monitor", choices=["val_accuracy", "val_loss"], help="what picks best.pt and early stopping"
    )
    train.add_argument(
        "--resume", metavar="RUN_FOLDER", help="continue a stopped run from its last.pt, as configured"
    )
    train.add_argument(
        "--strict", action="store_true", help="stop on the first unusable file instead of skipping it"
    )
    _add_runtime_arguments(train)
    train.add_argument("--out", default="runs", help="folder holding run folders (default: runs)")
    train.add_argument("--name", help="run folder name (default: train, train2, ...)")
    train.add_argument("--quiet", action="store_true", help="no progress or epoch lines")

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
    _add_runtime_arguments(evaluate)

    predict = commands.add_parser(
        "predict", help="top classes of images: files, folders, glob patterns, .zip archives"
    )
    predict.add_argument("checkpoint", help="a checkpoint, or an .onnx model from `cnnkit export` (no torch)")
    predict.add_argument(
        "images",
        nargs="+",
        metavar="PATH",
        help="an image, a folder (searched recursively), a glob pattern or a .zip (images inside)",
    )
    predict.add_argument("--top-k", type=int, default=5, help="classes per image (default: 5)")
    predict.add_argument("--format", choices=["table", "json", "csv"], default="table")
    # Deprecated alias kept so scripts written against --json keep working.
    predict.add_argument(
        "--json", dest="format", action="store_const", const="json", help="same as --format json"
    )
    predict.add_argument("--output", metavar="FILE", help="write the results to FILE instead of stdout")
    predict.add_argument(
        "--batch-size", type=int, default=256, help="images decoded and classified at once (default: 256)"
    )
    _add_runtime_arguments(predict)

    _add_export_parser(commands)
    _add_serve_parser(commands)

    summary = commands.add_parser("summary", help="print a model's layers and parameters")
    summary.add_argument("--model", default="tutorial")
    summary.add_argument("--num-classes", type=int, default=10)
    summary.add_argument("--img-size", type=int, default=32)

    commands.add_parser("models", help="list models and recipes")
    return parser


def _add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    handlers = {
        "train": _train,
        "evaluate": _evaluate,
        "predict": _predict,
        "summary": _summary,
        "models": _models,
        "export": _export,
        "serve": _serve,
    }
    try:
        return handlers[arguments.command](arguments)
    except TrainingInterrupted as interruption:
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the job
            return interruption.exit_code
        print(f"cnnkit: {interruption}", file=sys.stderr)
        if interruption.checkpoint:
            folder = Path(interruption.checkpoint).parent
            print(f"Resume with: cnnkit train --resume {shlex.quote(str(folder))}", file=sys.stderr)
        return interruption.exit_code
    except KeyboardInterrupt:
        print("\ncnnkit: interrupted", file=sys.stderr)
        return 130
    except ImportError as error:  # an optional extra that isn't installed; the message says which
        print(f"cnnkit: error: {error}", file=sys.stderr)
        return 1
    except (ValueError, OSError, FloatingPointError) as error:
        # One clear line for the user; a traceback is for bugs, not for bad input.
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"cnnkit: error: {message}", file=sys.stderr)
        return 1


# What a resumed run takes from its checkpoint; giving any of these with --resume is an error.
_RUN_SETTINGS = ("data", "recipe", "model", "epochs", "batch_size", "lr", "val_split")
_RUN_SETTINGS += ("img_size", "seed", "patience", "monitor", "name")


def _train(arguments: argparse.Namespace) -> int:
    from cnnkit.engine.distributed import shutdown

    finished = False
    try:
        code = _train_or_resume(arguments)
        finished = True
        return code
    finally:
        # Leave a torchrun job cleanly (a no-op for one process). After a normal finish every rank
        # gets here, so they meet first; after a failure a peer may never come, so no meeting.
        shutdown(synchronize=finished)


def _train_or_resume(arguments: argparse.Namespace) -> int:
    from cnnkit.recipes import DEFAULT_RECIPE
    from cnnkit.workflows import resolve_recipe, resume, train

    if arguments.resume:
        given = [name for name in _RUN_SETTINGS if getattr(arguments, name) is not None]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(f"--resume continues the run as it was configured. Received: {flags}")
        result = resume(
            arguments.resume,
            device=arguments.device,
            precision=arguments.precision,
            verbose=not arguments.quiet,
        )
        return _print_train_result(result)
    recipe = resolve_recipe(
        arguments.recipe or DEFAULT_RECIPE,
        model=arguments.model,
        epochs=arguments.epochs,
        batch_size=arguments.batch_size,
        learning_rate=arguments.lr,
        val_fraction=arguments.val_split,
        image_size=arguments.img_size,
        seed=arguments.seed,
        patience=arguments.patience,
        monitor=arguments.monitor,
    )
    result = train(
        arguments.data or "cifar10",
        recipe,
        device=arguments.device,
        precision=arguments.precision,
        out=arguments.out,
        name=arguments.name,
        verbose=not arguments.quiet,
        strict=arguments.strict,
    )
    return _print_train_result(result)


def _print_train_result(result) -> int:
    report = result.report
    if not report:  # a torchrun rank other than 0: rank 0 prints the job's result
        return 0
    evaluation = report.get("evaluation")
    if evaluation:
        print(
            f"{evaluation['split'].capitalize()} ({evaluation['count']} images): "
            f"loss {evaluation['loss']:.4f} - accuracy {evaluation['accuracy']:.4f}"
        )
    print(f"Trained in {report['train_seconds']:.1f}s; best epoch {report['best_epoch']}.")
    print(f"Run folder: {result.run_folder}")
    print(f"Where it fails, class by class: cnnkit evaluate {shlex.quote(str(result.run_folder))}/best.pt")
    return 0


def _evaluate(arguments: argparse.Namespace) -> int:
    from cnnkit.evaluation_report import format_evaluation
    from cnnkit.workflows import evaluate_checkpoint

    result = evaluate_checkpoint(
        arguments.checkpoint,
        arguments.data,
        device=arguments.device,
        precision=arguments.precision,
        out=arguments.out,
    )
    print(json.dumps(result) if arguments.json else format_evaluation(result))
    return 0


def _predict(arguments: argparse.Namespace) -> int:
    from cnnkit.prediction import predict_paths, write_predictions, write_predictions_file

    results = predict_paths(
        arguments.checkpoint,
        arguments.images,
        arguments.top_k,
        arguments.batch_size,
        device=arguments.device,
        precision=arguments.precision,
    )
    if arguments.output:
        summary = write_predictions_file(arguments.output, results, arguments.format)
        print(f"{summary.count} images, {summary.failed} failed, written to {arguments.output}")
    else:
        summary = write_predictions(results, sys.stdout, arguments.format)
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


def _export(arguments: argparse.Namespace) -> int:
    from cnnkit.export import export_onnx

    result = export_onnx(
        arguments.checkpoint,
        arguments.output,
        input_format=arguments.input,
        tta=arguments.tta,
        verify_data=arguments.verify_data,
        exporter=arguments.exporter,
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


def _add_serve_parser(commands) -> None:
    serve = commands.add_parser(
        "serve", help="an HTTP service and web page classifying images (POST /v1/predict, GET /)"
    )
    serve.add_argument("model", metavar="CHECKPOINT_OR_ONNX", help="a checkpoint or an .onnx model")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="default: 8000")
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
        "--tta",
        type=int,
        choices=[0, 1, 2],
        help="test-time augmentation level for a checkpoint (default: 0, one view: 3-6x faster than 2)",
    )
    serve.add_argument("--threads", type=int, help="model threads (default: every core but one)")
    serve.add_argument("--access-log", action="store_true", help="log a line per request")
    _add_runtime_arguments(serve)


def _serve(arguments: argparse.Namespace) -> int:
    from cnnkit.serving import serve

    serve(
        arguments.model,
        arguments.host,
        arguments.port,
        max_upload_mb=arguments.max_upload_mb,
        max_batch=arguments.max_batch,
        batch_wait_ms=arguments.batch_wait_ms,
        tta=arguments.tta,
        device=arguments.device,
        precision=arguments.precision,
        threads=arguments.threads,
        access_log=arguments.access_log,
    )
    return 0


def _summary(arguments: argparse.Namespace) -> int:
    from cnnkit.models import create_model
    from cnnkit.reports.summary import format_summary

    model = create_model(arguments.model, num_classes=arguments.num_classes, image_size=arguments.img_size)
    print(format_summary(model, arguments.img_size))
    return 0


def _models(_arguments: argparse.Namespace) -> int:
    from cnnkit.models import list_models
    from cnnkit.recipes import get_recipe, list_recipes

    print("Models:  " + ", ".join(list_models()))
    for name in list_recipes():
        recipe = get_recipe(name)
        print(
            f"Recipe {name}: model {recipe.model}, {recipe.epochs} epochs, batch {recipe.batch_size}, "
            f"lr {recipe.learning_rate:g}, validation split {recipe.val_fraction:g}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
