"""Multi-process training under torchrun: 2 CPU processes over gloo on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from cnnkit.checkpoint import load_checkpoint
from cnnkit.recipes import get_recipe
from cnnkit.runs.training import train
from tests.run_helpers import learning_metrics, train_command

WORKER = Path(__file__).with_name("distributed_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def torchrun(*arguments: str, **options) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [*TORCHRUN, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
        **options,
    )


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return output


def test_two_processes_train_identical_weights_equal_to_one_process(quadrant_folder, tmp_path):
    out = tmp_path / "out"
    finish(torchrun(str(WORKER), str(quadrant_folder), str(out), "2"))
    ranks = [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    for key, value in ranks[0]["state_dict"].items():
        assert torch.equal(value, ranks[1]["state_dict"][key]), key  # every rank, bit for bit
    assert [path.name for path in out.iterdir() if path.is_dir()] == ["job"]  # rank 0 alone writes
    history = ranks[0]["history"]
    assert history[-1]["loss"] < history[0]["loss"] * 0.5

    # One process with the same global batch (16) takes the same steps on the same images. The
    # tutorial network has no BatchNorm, so the only difference is floating-point summation
    # order: each rank sums 8 images' gradients and gloo adds the two halves. In fp32 that is
    # ~1e-7 relative a step; Adam normalises updates, so after 16 steps weights agree to ~1e-6.
    recipe = get_recipe("tutorial").replace(epochs=2, batch_size=16, seed=1)
    single = train(quadrant_folder, recipe, device="cpu", precision="fp32", out=out, verbose=False)
    for key, value in single.classifier.network.state_dict().items():
        torch.testing.assert_close(ranks[0]["state_dict"][key], value.cpu(), rtol=1e-4, atol=1e-5)
    for distributed_row, single_row in zip(history, single.history.rows, strict=True):
        for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert abs(distributed_row[metric] - single_row[metric]) < 1e-4, metric


def test_sigterm_to_torchrun_saves_once_and_resume_under_torchrun_matches(quadrant_folder, tmp_path):
    whole = finish(torchrun("-m", "cnnkit", *train_command(quadrant_folder, tmp_path, "whole")))
    assert whole.count("Run folder:") == 1  # rank 0 reports for the job

    process = torchrun("-m", "cnnkit", *train_command(quadrant_folder, tmp_path, "cut"))
    output = []
    for line in process.stdout:
        output.append(line)
        if line.startswith("Epoch 1/3 - "):
            process.send_signal(signal.SIGTERM)  # what a scheduler sends; torchrun forwards it
            break
    output.append(process.communicate(timeout=120)[0])
    text = "".join(output)
    folder = tmp_path / "cut"
    assert text.count("Resume with: cnnkit train --resume") == 1, text
    state = load_checkpoint(folder / "last.pt").training_state
    assert not state["finished"] and len(state["history"]) >= 1

    finish(torchrun("-m", "cnnkit", "train", "--resume", str(folder), "--device", "cpu"))
    assert learning_metrics(folder) == learning_metrics(tmp_path / "whole")
