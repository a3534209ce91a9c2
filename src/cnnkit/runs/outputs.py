"""What cnnkit's own folders hold, so that no output of another command replaces it.

``cnnkit predict --output runs/x/report.json`` once replaced a run's report, and ``cnnkit export
--output`` another model's ``.onnx``: ``check_output_file`` refuses both, unless forced. A folder
is recognised by the file its command writes first (a run folder by ``config.yaml``), and only
the files that command writes are protected: a user's own ``runs/x/predictions.csv`` is theirs
to replace. Torch-free: predicting with an ONNX model calls it.
"""

from __future__ import annotations

import os
from pathlib import Path

from cnnkit.runtime.constants import ONNX_SUFFIX

# Each kind of folder cnnkit writes: (its marker, the files it writes, by name). The writers:
# runs/folders.py, runs/recorder.py, runs/training.py (a run, and each trial of a tuning study);
# runs/evaluation.py: REPORT_FILES (an evaluation report, by default inside its run folder);
# experiments/tune.py (a study's folder) and experiments/compare.py (a comparison).
FOLDER_KINDS: dict[str, tuple[str, frozenset[str]]] = {
    "run folder": (
        "config.yaml",
        frozenset(
            {"config.yaml", "metrics.csv", "curves.png", "best.pt", "last.pt", "report.json", "skipped.txt"}
        ),
    ),
    "evaluation report": (
        "per_class.csv",
        frozenset(
            {
                "per_class.csv",
                "confusion_matrix.png",
                "confusion_matrix_normalized.png",
                "misclassified.png",
                "reliability.png",
                "report.json",
            }
        ),
    ),
    "multi-label evaluation report": (
        "per_label.csv",
        frozenset({"per_label.csv", "precision_recall.png", "worst_images.png", "report.json"}),
    ),
    "tuning study": (
        "study.db",
        frozenset(
            {"study.db", "trials.csv", "best.yaml", "optimization_history.png", "param_importances.png"}
        ),
    ),
    "comparison": ("comparison.json", frozenset({"comparison.json", "comparison.png"})),
}


def protected_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` must not be replaced by an output, or None: ``"report.json of the run folder
    runs/x"`` (whether or not the run has written it yet), or ``"an existing ONNX model"``."""
    target = Path(os.path.realpath(path))
    for kind, (marker, names) in FOLDER_KINDS.items():
        # The marker itself counts even alone: its folder may be the one being created.
        if target.name in names and (target.parent / marker).is_file():
            return f"{target.name} of the {kind} {target.parent}"
    if target.suffix.lower() == ONNX_SUFFIX and target.exists():
        return "an existing ONNX model"
    return None


def check_output_file(path: str | os.PathLike, force: bool = False) -> None:
    """Refuse, in one line, an output ``path`` that a cnnkit folder holds or an existing ``.onnx``.

    Call it before any work, so that a refused command costs nothing. ``force``: replace it anyway
    (the CLI's ``--force``); nothing is refused then.

    Raises:
        ValueError: ``path`` is a file a run, an evaluation, a study or a comparison wrote (or
            will write, as ``report.json`` of a run still training), or an existing ONNX model.
    """
    if force:
        return
    reason = protected_reason(path)
    if reason is not None:
        raise ValueError(
            f"{os.fspath(path)} is {reason}: cnnkit will not replace it. Choose another output, "
            "or pass --force (force=True) to replace it."
        )
