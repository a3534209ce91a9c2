"""Run under torchrun by tests/test_distributed.py: train, then save this rank's final weights.

torchrun --standalone --nproc-per-node 2 tests/distributed_worker.py DATA OUT [EPOCHS]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from cnnkit.engine.distributed import current, shutdown
from cnnkit.recipes import get_recipe
from cnnkit.runs.training import train


def main() -> None:
    data, out = sys.argv[1], Path(sys.argv[2])
    recipe = get_recipe("tutorial").replace(epochs=int(sys.argv[3]), batch_size=16, seed=1)
    result = train(data, recipe, device="cpu", precision="fp32", out=out, name="job", verbose=False)
    rank = current().rank
    state = {key: value.cpu() for key, value in result.classifier.network.state_dict().items()}
    torch.save({"state_dict": state, "history": result.history.rows}, out / f"rank{rank}.pt")
    shutdown()


if __name__ == "__main__":
    main()
