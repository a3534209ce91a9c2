"""What kind of labels a run has, and everything that follows from it: how labels are read, the
loss (with class weights), the output activation, how a prediction is decided, the metrics shown
and monitored by default, and what predictions, reports, export and the service return.

Today's runs have one class an image: ``SINGLE_LABEL``. Another kind of labels (several an
image: sigmoid outputs, a threshold a label) is another task object with the same methods.
Importing this package needs no torch: the methods that use it import it.
"""

from __future__ import annotations

from cnnkit.tasks.single_label import SingleLabelTask

SINGLE_LABEL = SingleLabelTask()
TASKS = {SINGLE_LABEL.name: SINGLE_LABEL}


def get_task(name: str | None) -> SingleLabelTask:
    """The task called ``name`` (None: single-label, what every checkpoint before tasks held)."""
    if name is None:
        return SINGLE_LABEL
    if name not in TASKS:
        raise ValueError(f"Unknown task: allowed are {', '.join(TASKS)}. Received: task={name!r}")
    return TASKS[name]


__all__ = ["SINGLE_LABEL", "TASKS", "SingleLabelTask", "get_task"]
