"""The ``cnnkit`` parser and entry point: one clear line for bad input, exit codes for scripts."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from cnnkit import __version__
from cnnkit.cli import audit, benchmark, cache, compare, info, train, tune, use
from cnnkit.engine.interrupt import TrainingInterrupted
from cnnkit.messages import shorten


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnkit", description="Train, evaluate and use CNN image classifiers."
    )
    parser.add_argument("--version", action="version", version=f"cnnkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_parser(commands)
    use.add_parsers(commands)
    compare.add_parser(commands)
    tune.add_parser(commands)
    info.add_parsers(commands)
    cache.add_parser(commands)
    audit.add_parser(commands)
    benchmark.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return arguments.handler(arguments)
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
        print(f"cnnkit: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except (ValueError, OSError, FloatingPointError) as error:
        # One clear line for the user; a traceback is for bugs, not for bad input.
        print(f"cnnkit: error: {_one_line(error)}", file=sys.stderr)
        return 1


def _one_line(error: BaseException) -> str:
    """The error's first line, cut to 500 characters (``shorten``): a message that echoes a huge
    value (a file's content, a YAML alias bomb) must not flood the terminal or a CI log."""
    text = str(error).strip()
    return shorten(text.splitlines()[0]) if text else type(error).__name__


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A library's warning as one line, without the source file and line it came from."""
    text = " ".join(str(message).split())
    print(f"cnnkit: warning: {shorten(text, 300)}", file=sys.stderr)
