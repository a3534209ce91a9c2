"""The CPU a measurement ran on: its model and the instruction sets int8 and bf16 speed depend
on (``platform.processor()`` says only "x86_64" on Linux). Torch-free."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from cnnkit.runtime.constants import available_cores

# The instruction sets int8 (and bf16) inference speed depends on; /proc/cpuinfo's names.
INSTRUCTION_FLAGS = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_info() -> dict[str, Any]:
    """``{"model": "AMD EPYC", "flags": ["avx2", "avx512f", "avx512_vnni", ...], "cores": 2}``:
    the CPU's name and the instruction sets of ``INSTRUCTION_FLAGS`` it has (Linux: from
    /proc/cpuinfo; elsewhere the architecture and no flags)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return {
        "model": model or platform.processor() or platform.machine(),
        "flags": [flag for flag in INSTRUCTION_FLAGS if flag in flags],
        "cores": available_cores(),
    }
