"""Flags several commands share."""

from __future__ import annotations

import argparse

from cnnkit.runtime.constants import PRECISIONS


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--precision`` (None when not given: a command may take it from elsewhere)."""
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--precision", choices=PRECISIONS, help="autocast precision (default: auto)")
