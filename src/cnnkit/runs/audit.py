"""The audit job (``cnnkit audit``, issue 22): what a data set holds, read as ``train`` reads it and
never changed. Duplicates (exact and near, within a class, across classes, across splits),
suspected label errors and outliers (confident learning on out-of-sample probabilities: k-fold
cross-validation with a quick recipe, or a trained model's on images it did not train on),
class counts, image sizes and skipped files; written as a report folder with ``exclude.txt``,
which ``cnnkit train --exclude`` honours."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnkit.api import Classifier
from cnnkit.audit import (
    DEFAULT_NEAR_DISTANCE,
    FILTERS,
    Fingerprints,
    find_label_issues,
    find_outliers,
    fingerprints,
    group_duplicates,
)
from cnnkit.checkpoint import load_checkpoint
from cnnkit.data import DataSplits, ImageData, load_dataset
from cnnkit.data.balance import class_balance_summary
from cnnkit.data.survey import survey_image_sizes
from cnnkit.recipes import Recipe, load_recipe
from cnnkit.runs.choices import default_recipe, plan_sizes
from cnnkit.runs.splits import training_splits
from cnnkit.runtime.device import configure_process
from cnnkit.runtime.normalization import Normalization

DEFAULT_FOLDS = 4
LABEL_FILTER = "low_self_confidence"  # confident learning's filter (cnnkit.audit.label_issues.FILTERS)
# Images listed as outliers: the lowest scores, 1 % of the data, at least 10 and at most 200.
_OUTLIER_SHARE, _OUTLIER_MIN, _OUTLIER_MAX = 0.01, 10, 200
_HELD_OUT_ORDER = ("test", "validation", "train")  # which copy of a duplicate is kept


@dataclass
class AuditData:
    """Every image of the data, whichever split, in one numbering (train, validation, test)."""

    splits: DataSplits
    parts: list[tuple[str, ImageData]]

    @property
    def count(self) -> int:
        return sum(len(data) for _, data in self.parts)

    def split_names(self) -> list[str]:
        return [split for split, data in self.parts for _ in range(len(data))]

    def names(self) -> list[str]:
        return [name for _, data in self.parts for name in (data.names or [None] * len(data))]

    def labels(self) -> torch.Tensor:
        return torch.cat([data.labels for _, data in self.parts])

    def image(self, index: int) -> np.ndarray:
        for _, data in self.parts:
            if index < len(data):
                return np.asarray(data.images[index : index + 1])[0]
            index -= len(data)
        raise IndexError(index)


def load_audit_data(
    data: str | os.PathLike,
    image_size: int | None,
    strict: bool,
    labels: str | os.PathLike | None,
    progress: bool,
) -> AuditData:
    """The data as ``train`` would read it, at the size it would store it (or ``image_size``)."""
    if image_size is None:
        survey = survey_image_sizes(data)
        recipe_name, _ = default_recipe(survey, None)
        image_size = plan_sizes(load_recipe(recipe_name), survey, None).stored_size
    splits = load_dataset(data, image_size=image_size, progress=progress, strict=strict, labels=labels)
    parts = [
        (name, split)
        for name, split in (("train", splits.train), ("validation", splits.validation), ("test", splits.test))
        if split is not None
    ]
    return AuditData(splits, parts)


def find_all_duplicates(audit: AuditData, near_distance: int | None) -> list[dict[str, Any]]:
    """Duplicate groups over every split, as plain dicts with class names."""
    prints = Fingerprints.join([fingerprints(data.images) for _, data in audit.parts])
    labels = audit.labels().numpy()
    groups = group_duplicates(prints, labels, audit.split_names(), audit.names(), near_distance=near_distance)
    class_names = audit.splits.train.class_names
    result = []
    for group in groups:
        entry = group.to_dict()
        for member in entry["members"]:
            member["label"] = _label_name(member["label"], class_names)
        result.append(entry)
    return result


def _label_name(label: Any, class_names: list[str]) -> str | list[str]:
    if isinstance(label, list | tuple):  # multi-label: the indices of the image's labels
        return [class_names[int(index)] for index in label]
    return class_names[int(label)]


def cross_validated_probabilities(
    audit: AuditData, recipe: Recipe, folds: int, device: str, precision: str, progress: bool
) -> np.ndarray:
    """Each image's class probabilities from a model that never saw it: ``folds`` stratified,
    seeded folds, a model trained on the others (``recipe``, no validation) for each."""
    data = _all_images(audit)
    generator = np.random.default_rng(recipe.seed)
    fold = np.empty(len(data), dtype=np.int64)
    labels = data.labels.numpy()
    for label in np.unique(labels):  # round-robin within each class: every fold holds every class
        members = generator.permutation(np.flatnonzero(labels == label))
        fold[members] = np.arange(len(members)) % folds
    probabilities = np.zeros((len(data), len(data.class_names)), dtype=np.float64)
    stored = int(data.images.shape[1])
    for number in range(folds):
        started = time.perf_counter()
        held = torch.from_numpy(np.flatnonzero(fold == number))
        train = data.subset(torch.from_numpy(np.flatnonzero(fold != number)))
        classifier = Classifier(
            recipe.model,
            class_names=data.class_names,
            image_size=recipe.image_size or stored,
            normalization=Normalization.for_recipe(recipe.normalization, train.images),
            device=device,
            precision=precision,
            seed=recipe.seed + number,
            **recipe.model_arguments,
        )
        classifier.resize_size = stored
        classifier.fit_job(classifier.training_job(train, None, recipe))
        probabilities[held.numpy()] = classifier.predict(data.images[held])
        if progress:
            seconds = time.perf_counter() - started
            print(
                f"Fold {number + 1}/{folds}: trained on {len(train):,} images, "
                f"scored {len(held):,} in {seconds:.0f}s",
                file=sys.stderr,
            )
    return probabilities


def _all_images(audit: AuditData) -> ImageData:
    """The splits' images in one ``ImageData`` (in memory: an audit reads them all anyway)."""
    images = torch.cat([torch.as_tensor(np.asarray(data.images[:])) for _, data in audit.parts])
    return ImageData(images, audit.labels(), audit.splits.train.class_names, audit.names())


def model_probabilities(
    audit: AuditData, checkpoint_path: str | os.PathLike, data: str | os.PathLike, device: str, precision: str
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities of every image by the trained model, whether each is out of its sample):
    images of the run's own training split were trained on, so only the others are judged."""
    checkpoint = load_checkpoint(checkpoint_path)
    classifier = Classifier.from_checkpoint(
        checkpoint, device=device, precision=precision, source=checkpoint_path
    )
    if list(classifier.class_names) != list(audit.splits.train.class_names):
        raise ValueError(
            f"{checkpoint_path} knows the classes {', '.join(classifier.class_names)}; the data has "
            f"{', '.join(audit.splits.train.class_names)}: audit it with a model of the same classes"
        )
    probabilities = np.concatenate([classifier.predict(data_split.images) for _, data_split in audit.parts])
    outside = np.ones(len(probabilities), dtype=bool)
    same_data = os.path.abspath(data) == checkpoint.config.get("data") and checkpoint.recipe is not None
    if same_data:
        trained_on, _ = training_splits(audit.splits, checkpoint.recipe)
        seen = set(trained_on.names or [])
        outside = np.array([name not in seen for name in audit.names()])
    return probabilities.astype(np.float64), outside


def judge_labels(
    audit: AuditData, probabilities: np.ndarray, outside: np.ndarray, label_filter: str = LABEL_FILTER
) -> tuple[list, list]:
    """(suspected label errors, outliers) among the images ``outside`` marks (out of sample), as
    plain dicts ranked most suspect first, with class names. ``label_filter``: confident
    learning's filter (``cnnkit.audit.label_issues.FILTERS``)."""
    judged = np.flatnonzero(outside)
    labels = audit.labels().numpy()[judged]
    class_names, names, splits = audit.splits.train.class_names, audit.names(), audit.split_names()
    issues = find_label_issues(labels, probabilities[judged], filter_by=label_filter)
    suspect = [
        {
            "index": int(judged[issue.index]),
            "name": names[judged[issue.index]],
            "split": splits[judged[issue.index]],
            "given": class_names[issue.given_label],
            "suggested": class_names[issue.suggested_label],
            "self_confidence": float(issue.self_confidence),
        }
        for issue in issues.issues
    ]
    ranking = find_outliers(probabilities[judged], labels)
    count = int(min(_OUTLIER_MAX, max(_OUTLIER_MIN, round(_OUTLIER_SHARE * len(judged)))))
    outliers = [
        {
            "index": int(judged[position]),
            "name": names[judged[position]],
            "split": splits[judged[position]],
            "label": class_names[labels[position]],
            "score": float(ranking.scores[position]),
        }
        for position in ranking.top(count)
    ]
    return suspect, outliers


def exclusions(duplicates: list[dict[str, Any]], label_issues: list[dict[str, Any]] | None) -> list[str]:
    """The images ``exclude.txt`` suggests leaving out: every suspected label error; of a duplicate
    group, every image when its labels conflict, else all but one (kept: a test, then a
    validation, then a training copy, so that a leak is closed on the training side)."""
    chosen: dict[str, None] = {}
    for group in duplicates:
        members = group["members"]
        if not group["across_classes"]:
            keep = min(members, key=lambda member: _HELD_OUT_ORDER.index(member["split"]))
            members = [member for member in members if member is not keep]
        chosen.update(dict.fromkeys(member["name"] for member in members if member["name"]))
    chosen.update(dict.fromkeys(row["name"] for row in label_issues or () if row["name"]))
    return list(chosen)


AUDIT_FILES = {
    "page": "audit.html",
    "json": "audit.json",
    "duplicates_csv": "duplicates.csv",
    "label_issues_csv": "label_issues.csv",
    "outliers_csv": "outliers.csv",
    "exclude": "exclude.txt",
}


def audit(
    data: str | os.PathLike,
    model: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    folds: int = DEFAULT_FOLDS,
    overrides: dict[str, Any] | None = None,
    near_distance: int | None = DEFAULT_NEAR_DISTANCE,
    labels: str | os.PathLike | None = None,
    strict: bool = False,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
    label_filter: str = LABEL_FILTER,
) -> dict[str, Any]:
    """Audit ``data`` (anything ``train`` reads) into a report folder (``out``: new or empty; default
    a new ``runs/audit``, ``audit2``...) and return what was found (``audit.json``'s contents).

    Label errors and outliers are searched for in single-label data: with ``model`` (a checkpoint
    of the same classes) from its probabilities on the images it did not train on, else by
    ``folds``-fold cross-validation with the recipe ``train`` would choose, changed by
    ``overrides`` (``{"epochs": 4}``). ``near_distance``: pHash bits two near duplicates may
    differ by (None: exact duplicates only). ``label_filter``: which images confident learning
    flags (``cnnkit.audit.label_issues.FILTERS``; the default ranks by self-confidence).
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer of at least 2. Received: folds={folds!r}")
    if label_filter not in FILTERS:
        allowed = ", ".join(FILTERS)
        raise ValueError(f"label_filter must be one of {allowed}. Received: label_filter={label_filter!r}")
    folder = _audit_folder(out)  # refused before any work when it holds files
    configure_process()
    started = time.perf_counter()
    stored = load_checkpoint(model).resize_size if model is not None else None
    data_set = load_audit_data(data, stored, strict, labels, progress)
    duplicates = find_all_duplicates(data_set, near_distance)
    issues, outliers, note, method = _label_search(
        data_set, data, model, folds, overrides, device, precision, progress, label_filter
    )
    counts = class_balance_summary(data_set.labels(), data_set.splits.train.class_names)
    result = {
        "data": data_set.splits.source,
        "images": data_set.count,
        "splits": {split: len(part) for split, part in data_set.parts},
        **counts,
        "image_size": int(data_set.parts[0][1].images.shape[1]),
        "skipped": len(data_set.splits.skipped),
        "duplicates": duplicates,
        "label_issues": issues,
        "outliers": outliers,
        "label_issues_note": note,
        "method": method,
    }
    probabilities = method.pop("_probabilities", None)
    excluded = exclusions(duplicates, issues)
    result.update(excluded=len(excluded), seconds=round(time.perf_counter() - started, 1))
    result["files"] = write_audit_folder(folder, result, excluded, data_set, probabilities)
    return result


def _label_search(
    data_set: AuditData,
    data: str | os.PathLike,
    model: str | os.PathLike | None,
    folds: int,
    overrides: dict[str, Any] | None,
    device: str,
    precision: str,
    progress: bool,
    label_filter: str,
) -> tuple[list | None, list | None, str | None, dict[str, Any]]:
    """(label issues, outliers, why none were searched for, how they were) of the data."""
    if data_set.splits.train.multi_label:
        note = "Label errors are searched for in single-label data only."
        return None, None, note, {"label_issues": None}
    if model is not None:
        probabilities, outside = model_probabilities(data_set, model, data, device, precision)
        method = {"label_issues": "model", "model": str(model), "judged_images": int(outside.sum())}
        if not outside.any():
            return None, None, f"{model} trained on every image: none is out of its sample.", method
    else:
        survey = survey_image_sizes(data)
        recipe_name, _ = default_recipe(survey, None)
        recipe = load_recipe(recipe_name, {**(overrides or {}), "validation_split": 0.0})
        probabilities = cross_validated_probabilities(data_set, recipe, folds, device, precision, progress)
        outside = np.ones(len(probabilities), dtype=bool)
        method = {"label_issues": "cross-validation", "folds": folds, "recipe": recipe.to_dict()}
    method["label_filter"] = label_filter
    issues, outliers = judge_labels(data_set, probabilities, outside, label_filter)
    # Kept for probabilities.npy (NaN where in sample): cleanlab and other tools take them too.
    method["_probabilities"] = np.where(outside[:, None], probabilities, np.nan).astype(np.float32)
    return issues, outliers, None, method


def _audit_folder(out: str | os.PathLike | None) -> Path:
    from cnnkit.runs.folders import output_folder

    return output_folder(out, "runs", "audit", "audit", "or no --out for a new runs/audit")


def write_audit_folder(
    folder: Path,
    result: dict[str, Any],
    excluded: list[str],
    data_set: AuditData,
    probabilities: np.ndarray | None = None,
) -> dict[str, str]:
    """The report's files: the page, the JSON, a CSV a finding, ``exclude.txt``, ``skipped.txt``
    and the out-of-sample ``probabilities.npy`` (images in audit.json's order; NaN in sample)."""
    from cnnkit.data import write_skipped_list
    from cnnkit.fileio import atomic_write_text, atomic_write_with, json_text
    from cnnkit.reports.audit_page import write_audit_page

    files = {kind: str(folder / name) for kind, name in AUDIT_FILES.items()}
    duplicate_rows = [
        {"group": number, "kind": group["kind"], "relations": "; ".join(group["relations"]), **member}
        for number, group in enumerate(result["duplicates"], 1)
        for member in group["members"]
    ]
    _write_csv(
        files["duplicates_csv"],
        duplicate_rows,
        ["group", "kind", "relations", "index", "name", "split", "label", "distance"],
    )
    _write_csv(
        files["label_issues_csv"],
        result["label_issues"] or [],
        ["index", "name", "split", "given", "suggested", "self_confidence"],
    )
    _write_csv(files["outliers_csv"], result["outliers"] or [], ["index", "name", "split", "label", "score"])
    header = f"# cnnkit audit of {result['data']}: {len(excluded)} image(s) to leave out\n"
    header += "# (cnnkit train --exclude this-file; delete a line to keep that image)\n"
    atomic_write_text(files["exclude"], header + "".join(f"{name}\n" for name in excluded))
    if data_set.splits.skipped:
        files["skipped"] = str(folder / "skipped.txt")
        write_skipped_list(files["skipped"], data_set.splits.skipped)
    if probabilities is not None:
        files["probabilities"] = str(folder / "probabilities.npy")
        atomic_write_with(Path(files["probabilities"]), lambda file: np.save(file, probabilities))
    write_audit_page(files["page"], result, data_set.image)
    atomic_write_text(
        files["json"], json_text({**result, "files": files}, indent=2, ensure_ascii=False) + "\n"
    )
    return files


def _write_csv(path: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    import csv
    import io

    from cnnkit.fileio import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {key: "; ".join(value) if isinstance(value, list) else value for key, value in row.items()}
        )
    atomic_write_text(path, buffer.getvalue())


def describe_audit(result: dict[str, Any]) -> str:
    """What ``cnnkit audit`` prints."""
    from cnnkit.reports.audit_page import duplicate_summary

    lines = [
        f"Audited {result['images']:,} images of {result['data']} in {result['seconds']:.0f}s",
        f"Duplicates: {duplicate_summary(result['duplicates'])}",
    ]
    if result["label_issues"] is None:
        lines.append(f"Label errors: not searched ({result['label_issues_note']})")
    else:
        lines.append(
            f"Suspected label errors: {len(result['label_issues']):,}; "
            f"outliers listed: {len(result['outliers']):,}"
        )
    lines.append(
        f"exclude.txt lists {result['excluded']:,} image(s): "
        f"cnnkit train --exclude {result['files']['exclude']}"
    )
    lines.append(f"Report: {result['files']['page']}")
    return "\n".join(lines)
