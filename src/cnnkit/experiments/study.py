"""A tuning study's persistence: its SQLite file, the settings recorded in it, Optuna itself.

Optuna is an optional extra (``cnnkit[tune]``): it is imported here, lazily, and its absence is
one line saying how to install it.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnkit.experiments.space import (
    Distribution,
    check_space,
    default_space,
    parse_space,
    read_space_file,
    space_to_plain,
)
from cnnkit.recipes import Recipe, load_recipe

STUDY_FILE = "study.db"
DEFAULT_NAME = "tune"
INSTALL_HINT = "pip install 'cnnkit[tune]'"
SETTINGS_ATTRIBUTE = "cnnkit"  # the study's data, recipe, space and seed, recorded in study.db


@dataclass(frozen=True)
class StudySettings:
    """What a study searches, fixed when it is created and read back by ``--resume``."""

    data: str
    recipe: Recipe  # the base recipe (with --set applied); trials change the space's fields
    space: dict[str, Distribution]
    seed: int
    # Fields of the space that --set fixed, so not searched (a new study's; not recorded).
    fixed: tuple[str, ...] = ()

    @property
    def fixed_note(self) -> str | None:
        """The line saying which fields of the space --set fixed (None: none)."""
        if not self.fixed:
            return None
        return f"Not searching {', '.join(self.fixed)}: fixed by --set."

    @property
    def maximize(self) -> bool:
        from cnnkit.engine.metrics import higher_is_better

        return higher_is_better(self.recipe.monitor)

    def to_plain(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "recipe": self.recipe.to_dict(),
            "space": space_to_plain(self.space),
            "seed": self.seed,
        }

    @classmethod
    def from_plain(cls, values: Any, source: str) -> StudySettings:
        if not isinstance(values, dict) or not {"data", "recipe", "space"} <= set(values):
            raise ValueError(f"{source} holds no cnnkit study settings: it was not made by `cnnkit tune`.")
        recipe = Recipe.from_dict(values["recipe"])
        return cls(
            str(values["data"]), recipe, parse_space(values["space"], source), int(values.get("seed", 0))
        )


def import_optuna() -> Any:
    """Optuna, or an ``ImportError`` saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise ImportError(f"cnnkit tune needs Optuna, an optional extra: {INSTALL_HINT}") from None
    return optuna


def parse_duration(text: str) -> float:
    """Seconds in ``"30m"``, ``"2h"``, ``"90s"``, ``"1h30m"`` or ``"600"`` (plain seconds)."""
    cleaned = str(text).strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms]?)", cleaned)
    joined = "".join(f"{number}{unit}" for number, unit in parts)
    if not parts or joined != cleaned.replace(" ", "") or any(not unit for _, unit in parts[:-1]):
        raise ValueError(f"A budget is a duration like 30m, 2h, 90s or 600 (seconds). Received: {text!r}")
    seconds = sum(float(number) * {"h": 3600, "m": 60, "s": 1, "": 1}[unit] for number, unit in parts)
    if seconds <= 0:
        raise ValueError(f"A budget must be longer than 0 seconds. Received: {text!r}")
    return seconds


def new_study_settings(
    data: str | os.PathLike,
    recipe: Recipe | str | os.PathLike | None = None,
    space: Mapping[str, Any] | str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> StudySettings:
    """The settings of a new study, checked: ``recipe`` (a name, YAML file or ``Recipe``; None: the
    one ``cnnkit train`` picks for ``data``) with ``overrides``, and ``space`` (a mapping, a YAML
    file, or None: ``default_space`` of that recipe), whose every bound must suit the recipe."""
    if str(data) != "cifar10" and not Path(data).exists():  # before a study folder is made for it
        raise FileNotFoundError(f"Data not found: {data}")
    if recipe is None:
        from cnnkit.data.survey import survey_image_sizes
        from cnnkit.runs.choices import default_recipe

        recipe, _ = default_recipe(survey_image_sizes(data), None)
    overrides = overrides or {}
    base = load_recipe(recipe, overrides)
    from cnnkit.data.folders import has_label_table
    from cnnkit.tasks import MULTI_LABEL

    if str(data) != "cifar10" and has_label_table(data):
        # Multi-label data: trials are scored by what its runs monitor (mAP for the default).
        base = base.replace(monitor=MULTI_LABEL.monitor_for(base.monitor))
    if space is None:
        chosen, source = default_space(base), f"the {base.name} recipe's default space"
    elif isinstance(space, Mapping):
        chosen, source = space_from_mapping(space), "the search space"
    else:
        chosen, source = read_space_file(space), str(space)
    # What --set fixes is what every trial trains with: the space does not vary it.
    fixed = tuple(key for key in chosen if any(_overlap(key, name) for name in overrides))
    chosen = {key: value for key, value in chosen.items() if key not in fixed}
    if not chosen:
        raise ValueError(
            f"Nothing left to search: --set fixes every field of {source}. Received: --set "
            + ", ".join(f"{key}={value!r}" for key, value in overrides.items())
        )
    check_space(chosen, base, source)
    location = "cifar10" if str(data) == "cifar10" else os.path.abspath(data)
    return StudySettings(location, base, chosen, seed, fixed)


def _overlap(key: str, name: str) -> bool:
    """Whether space ``key`` and --set ``name`` touch one field (``model_arguments`` and
    ``model_arguments.widths`` do)."""
    return key == name or key.startswith(name + ".") or name.startswith(key + ".")


def create_study(
    optuna: Any, settings: StudySettings, out: str | os.PathLike, name: str | None
) -> tuple[Any, Path]:
    from cnnkit.runs.folders import create_run_folder

    folder = create_run_folder(out, name or DEFAULT_NAME)  # never an earlier study's folder
    study = optuna.create_study(
        storage=_storage(optuna, folder),
        study_name=folder.name,
        direction="maximize" if settings.maximize else "minimize",
    )
    study.set_user_attr(SETTINGS_ATTRIBUTE, settings.to_plain())
    return study, folder


def load_study(optuna: Any, resume: str | os.PathLike) -> tuple[Any, StudySettings, Path]:
    folder = Path(resume)
    if folder.name == STUDY_FILE and folder.is_file():
        folder = folder.parent
    if not (folder / STUDY_FILE).is_file():
        raise FileNotFoundError(
            f"{folder} holds no {STUDY_FILE}: --resume takes the folder `cnnkit tune` made, e.g. runs/tune"
        )
    storage = _storage(optuna, folder)
    names = optuna.study.get_all_study_names(storage)
    if folder.name not in names and len(names) != 1:
        raise ValueError(
            f"{folder / STUDY_FILE} holds studies {', '.join(names) or 'none'}: which is unclear."
        )
    study = optuna.load_study(study_name=folder.name if folder.name in names else names[0], storage=storage)
    settings = StudySettings.from_plain(study.user_attrs.get(SETTINGS_ATTRIBUTE), str(folder / STUDY_FILE))
    return study, settings, folder


def _storage(optuna: Any, folder: Path) -> Any:
    """The study's SQLite database; the heartbeat marks a trial whose process died (kill -9) as
    failed when the study next runs, and a long lock timeout lets several processes share it."""
    return optuna.storages.RDBStorage(
        f"sqlite:///{(folder / STUDY_FILE).resolve()}",
        engine_kwargs={"connect_args": {"timeout": 60}},
        heartbeat_interval=60,
        grace_period=180,
    )


@contextlib.contextmanager
def quiet_optuna(optuna: Any) -> Iterator[None]:
    """Optuna's own log and experimental-feature warnings off (cnnkit prints a line a trial),
    restored afterwards: a library call leaves the process as it found it."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(previous)


def space_from_mapping(space: Mapping[str, Any]) -> dict[str, Distribution]:
    if all(isinstance(value, Distribution) for value in space.values()):
        return dict(space)
    return parse_space(space, "the search space")
