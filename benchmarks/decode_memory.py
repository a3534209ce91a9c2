"""Peak memory of decoding an image folder or zip from scratch (issue 4: bounded memory).

Runs the load in a fresh process with an empty cache and reports the process's peak resident
memory against a baseline process that only imports cnnkit's data layer (and so torch). The
difference should be the decoded tensor plus a small constant.

    python benchmarks/decode_memory.py [--data ../shared/data/cifar10-jpeg-train.zip] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-train.zip"

CHILD = """
import json, resource, sys, time
from cnnkit.data import load_dataset
if sys.argv[1] == "load":
    started = time.perf_counter()
    splits = load_dataset(sys.argv[2], cache_dir=sys.argv[3], workers=int(sys.argv[4]), progress=False)
    seconds = time.perf_counter() - started
    tensor = splits.train.images.numel() + (splits.test.images.numel() if splits.test else 0)
else:
    seconds, tensor = 0.0, 0
# ru_maxrss is in KiB on Linux; children are the decoding workers.
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"peak": peak, "worker_peak": workers, "tensor": tensor, "seconds": seconds}))
"""


def measure(mode: str, data: str, cache: str, workers: int) -> dict:
    output = subprocess.run(
        [sys.executable, "-c", CHILD, mode, data, cache, str(workers)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--workers", type=int, default=2)
    arguments = parser.parse_args()
    mebibyte = 2**20
    with tempfile.TemporaryDirectory() as cache:
        baseline = measure("baseline", arguments.data, cache, arguments.workers)
        loaded = measure("load", arguments.data, cache, arguments.workers)
    extra = loaded["peak"] - baseline["peak"]
    print(
        f"{arguments.data}: decoded {loaded['tensor'] / mebibyte:.1f} MiB in {loaded['seconds']:.1f}s "
        f"with {arguments.workers} workers; main process peak {loaded['peak'] / mebibyte:.0f} MiB against "
        f"{baseline['peak'] / mebibyte:.0f} MiB after imports alone: +{extra / mebibyte:.1f} MiB "
        f"({extra / max(1, loaded['tensor']):.2f}x the tensor); largest worker peak "
        f"{loaded['worker_peak'] / mebibyte:.0f} MiB"
    )


if __name__ == "__main__":
    main()
