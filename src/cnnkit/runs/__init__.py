"""Runs: whole jobs and the folders they leave behind.

``training`` (``train``, ``resume``: a run folder with config, metrics, curves, checkpoints and a
report), ``evaluation`` (``evaluate_checkpoint``: a report folder), ``folders`` (naming and the
files of a run folder, ``read_run_config``), ``recorder`` (the callback writing a run folder).
Importing ``cnnkit.runs.evaluation`` does not import the trainer.
"""
