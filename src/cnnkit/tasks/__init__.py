"""What kind of labels a run has, and everything that follows from it: how labels are read, the
loss (with class weights), the output activation, how a prediction is decided, the metrics shown
and monitored by default, and what predictions, reports, export and the service return.

Most runs have one class an image: ``SINGLE_LABEL``. ``MULTI_LABEL`` (several labels an image:
sigmoid outputs, binary cross-entropy, a threshold a label) is the second task object, with the
same methods; data with a ``labels.csv`` table gets it (issue 21).
Importing this package needs no torch: the methods that use it import it.
"""

from __future__ import annotations

from cnnkit.tasks.multi_label import MultiLabelTask
from cnnkit.tasks.single_label import SingleLabelTask

SINGLE_LABEL = SingleLabelTask()
MULTI_LABEL = MultiLabelTask()
TASKS = {SINGLE_LABEL.name: SINGLE_LABEL, MULTI_LABEL.name: MULTI_LABEL}


def get_task(name: str | None) -> SingleLabelTask | MultiLabelTask:
    """The task called ``name`` (None: single-label, what every checkpoint before tasks held)."""
    if name is None:
        return SINGLE_LABEL
    if name not in TASKS:
        raise ValueError(f"Unknown task: allowed are {', '.join(TASKS)}. Received: task={name!r}")
    return TASKS[name]


__all__ = ["MULTI_LABEL", "SINGLE_LABEL", "TASKS", "MultiLabelTask", "SingleLabelTask", "get_task"]
