"""The command line: ``cnnkit train|evaluate|predict|export|serve|summary|models|cache``.

Each command module adds its parser and handler; handlers only parse and call the library.
"""

from cnnkit.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
