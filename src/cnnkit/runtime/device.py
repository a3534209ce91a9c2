"""Device, precision and process set-up. Only the runtime decides these; models stay plain.

``configure_process`` changes process-wide state (threads, denormal flushing, the allocator):
the command line and the whole jobs in ``cnnkit.runs`` call it once, where a process starts;
library calls such as ``Classifier.fit`` never do. A notebook calls it itself for the same speed.
"""

from __future__ import annotations

import ctypes
import os
import platform

import torch

from cnnkit.runtime.constants import PRECISIONS, available_cores


def flush_denormals() -> bool:
    """Treat denormal floats as zero on this CPU thread and on threads started after it.

    Adam's second-moment estimates drift into the denormal range within an epoch, and x86 cores
    compute on denormals ~100x slower: measured here, tutorial steps slowed from 6.9 to 13 ms
    during the first epoch without this, and stayed at 6.9 ms with it. TensorFlow flushes
    denormals on CPU by default, so this also matches the tutorial's numerics. The flag is per
    thread and inherited only by threads created later, hence ``configure_process`` sets it
    before any work starts PyTorch's thread pool.
    """
    return torch.set_flush_denormal(True)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the system.

    Large tensors (activations of a 1024-image batch run to >100 MB) are otherwise mapped fresh
    and unmapped every step, and touching new pages costs a page fault per 4 KiB: measured
    163,000 faults and 1,017 ms a step for the fast network, against none and 871 ms with this.
    The cost is that the process keeps its peak memory. A no-op off glibc.

    Every thread then allocates from one arena: with several (glibc gives a thread that
    allocates its own), memory that the batch-reading thread allocated and the main thread freed
    was not reused, and evaluating 400,000 images at 64 px grew past 22 GiB. With one arena and
    the logits in one tensor (``runtime.batched``), 40,000 images peak at 1.7 GiB instead of
    4.7 (docs/benchmarks.md).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # from glibc's malloc.h
    return (
        bool(libc.mallopt(m_mmap_max, 0))
        and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
        and bool(libc.mallopt(m_arena_max, 1))
    )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU; otherwise any name torch understands."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"Unknown device. Received: device={device!r}. Use auto, cpu, cuda or cuda:N."
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"CUDA was asked for but is not available here. Received: device={device!r}")
    return resolved


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 arithmetic (AVX512-BF16 or AMX), which makes it fast."""
    cpu = torch.backends.cpu
    has_avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    has_amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return bool(has_avx512_bf16 or has_amx) and cpu is not None


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype to train in (``torch.float32`` means no autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"Unknown precision. Received: precision={precision!r}. Use {', '.join(PRECISIONS)}."
        )
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # Without native bf16 units, emulated bf16 is slower than fp32 on CPU.
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def precision_warning(device: torch.device, precision: str) -> str | None:
    """A one-line warning when ``precision`` is a slow choice on ``device``, else None."""
    if device.type == "cpu" and precision == "fp16":
        faster = "bf16, which this CPU computes natively" if cpu_supports_bf16() else "fp32"
        return f"fp16 on a CPU is emulated: several times slower than {faster} (--precision auto picks it)."
    return None


def configure_threads(threads: int | None = None) -> int:
    """Use one intra-op thread per available core (PyTorch may count hyperthreads otherwise).

    Processes that torchrun started on one machine share its cores (LOCAL_WORLD_SIZE of them).
    """
    sharing = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    count = threads or max(1, available_cores() // sharing)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def configure_process(threads: int | None = None) -> int:
    """Set up this process for training speed: threads, denormal flushing, allocator (see each).

    Call it once, early, where a process starts; returns the thread count. Idempotent.
    """
    flush_denormals()
    keep_freed_memory()
    return configure_threads(threads)


def precision_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
