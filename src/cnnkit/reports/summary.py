"""A Keras-like model summary: each layer, its output shape, its parameters, and totals."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    parameters: int


def summarize(model: nn.Module, image_size: int, channels: int = 3) -> list[LayerRow]:
    """Run one dummy image through ``model`` and record every leaf layer that runs, in order."""
    rows: list[LayerRow] = []
    names = {module: name for name, module in model.named_modules()}

    def record(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        parameters = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append(LayerRow(names[module], type(module).__name__, tuple(output.shape[1:]), parameters))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [leaf.register_forward_hook(record) for leaf in leaves]
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, channels, image_size, image_size, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return rows


def format_summary(model: nn.Module, image_size: int, title: str | None = None) -> str:
    """The summary table as text; output shapes are PyTorch's (batch, channels, height, width)."""
    rows = summarize(model, image_size)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    size_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    table = [
        (f"{row.name} ({row.kind})", str((None, *row.output_shape)), f"{row.parameters:,}") for row in rows
    ]
    headers = ("Layer (type)", "Output Shape", "Param #")
    widths = [max(len(headers[i]), *(len(r[i]) for r in table)) + 4 for i in range(3)]
    line_width = sum(widths)
    lines = [f'Model: "{title or getattr(model, "model_name", type(model).__name__)}"']
    lines += [
        "┏" + "━" * (line_width - 2) + "┓",
        _row(headers, widths),
        "┡" + "━" * (line_width - 2) + "┩",
    ]
    lines += [_row(r, widths) for r in table]
    lines += ["└" + "─" * (line_width - 2) + "┘"]
    lines += [
        f" Total params: {total:,} ({_megabytes(size_bytes)})",
        f" Trainable params: {trainable:,}",
        f" Non-trainable params: {total - trainable:,}",
    ]
    return "\n".join(lines)


def _row(cells: tuple[str, str, str], widths: list[int]) -> str:
    text = cells[0].ljust(widths[0]) + cells[1].ljust(widths[1]) + cells[2].rjust(widths[2] - 4)
    return "│ " + text.ljust(sum(widths) - 4) + " │"


def _megabytes(size_bytes: int) -> str:
    return f"{size_bytes / 2**20:.2f} MB"
