"""How to read random training batches from a store on disk (issue 12): milliseconds a batch and
the resident memory the reads leave behind, for each way of reading.

    python benchmarks/store_reads.py --data big.zip --img-size 64 [--count 100000] [--batches 200]

The store is built first if missing (``load_dataset``). Batches are random index sets, as an
epoch's shuffled order gives them; the store's pages are in the OS page cache (a first pass reads
them), so the figures are what a set that fits in the page cache costs:
- ``tensor in memory``: indexing one uint8 tensor (the in-memory path; it holds every image);
- ``preadv (StoredImages)``: cnnkit's reader, one ``os.preadv`` a run of consecutive rows;
- ``memmap``: NumPy memmap fancy indexing of the sorted rows;
- ``memmap + madvise``: the same, dropping the mapping's pages every 16 batches.
"""

from __future__ import annotations

import argparse
import mmap
import platform
import time

import numpy as np
import torch

from cnnkit.data import load_dataset
from cnnkit.data.stored_images import StoredImages


def resident_mebibytes() -> float:
    """This process's resident memory (anonymous + file-backed pages), from /proc."""
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * mmap.PAGESIZE / 2**20


def time_reads(read, batches: list[np.ndarray]) -> tuple[float, float]:
    """(ms a batch, resident MiB added) over ``batches``."""
    before = resident_mebibytes()
    started = time.perf_counter()
    for number, rows in enumerate(batches):
        read(rows, number)
    seconds = time.perf_counter() - started
    return 1000 * seconds / len(batches), resident_mebibytes() - before


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--count", type=int, default=100_000, help="images of the store to draw from")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 2000])
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    train = load_dataset(arguments.data, image_size=arguments.img_size, in_memory=False).train
    stored: StoredImages = train.images.subset(slice(0, arguments.count))
    count = len(stored)
    file = stored.file
    mapped = np.load(file.path, mmap_mode="r")
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}; {count:,} images of "
        f"{arguments.img_size} px ({count * file.row_bytes / 2**30:.2f} GiB), {arguments.batches} random "
        "batches each"
    )
    stored[np.arange(count)]  # one pass: the store in the page cache, as in any epoch after the first
    in_memory = stored[np.arange(count)]
    for batch_size in arguments.batch_sizes:
        generator = np.random.default_rng(0)
        batches = [generator.choice(count, batch_size, replace=False) for _ in range(arguments.batches)]

        def memmap_read(rows: np.ndarray, number: int, advise: bool = False) -> torch.Tensor:
            order = np.argsort(rows)
            gathered = np.empty((len(rows), *mapped.shape[1:]), dtype=np.uint8)
            gathered[order] = mapped[rows[order]]
            if advise and number % 16 == 15:
                mapped._mmap.madvise(mmap.MADV_DONTNEED)
            return torch.from_numpy(gathered)

        ways = {
            "tensor in memory": lambda rows, number: in_memory[torch.from_numpy(rows)],
            "preadv (StoredImages)": lambda rows, number: stored[rows],
            "memmap": memmap_read,
            "memmap + madvise": lambda rows, number: memmap_read(rows, number, advise=True),
        }
        for name, read in ways.items():
            if name.startswith("memmap"):
                mapped._mmap.madvise(mmap.MADV_DONTNEED)  # each memmap way starts unmapped
            milliseconds, grown = time_reads(read, batches)
            print(
                f"batch {batch_size:>5}  {name:<22} {milliseconds:8.2f} ms a batch, resident +{grown:.1f} MiB"
            )


if __name__ == "__main__":
    main()
