"""The CPU a benchmark ran on, in the words docs/benchmarks.md needs: model and the instruction sets
that decide cnnkit's precision and speed (platform.processor() says only "x86_64" on Linux)."""

from __future__ import annotations

import platform
from pathlib import Path

# Flags that change what a training or inference step runs on: bf16 autocast, AMX, int8, or fp32 only.
NOTABLE_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")


def cpu_description() -> str:
    """``"AMD EPYC (avx2, avx512f, avx512_bf16)"``; the machine's architecture where /proc says nothing."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    notable = [flag for flag in NOTABLE_FLAGS if flag in flags]
    return f"{model or platform.machine()} ({', '.join(notable) or 'no AVX2'})"
