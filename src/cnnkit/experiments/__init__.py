"""Experiments over runs: compare finished runs (``compare``), search a recipe's settings (``tune``).

``compare.compare_runs(paths)`` reads run folders into one table and one plot;
``tune.tune(data, recipe, trials=12)`` runs an Optuna study whose trials are run folders, over a
search space from ``space`` (a default per recipe, or a YAML file). Optuna is an optional extra
(``pip install 'cnnkit[tune]'``), imported only by the functions that search.
"""
