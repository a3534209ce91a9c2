"""The Python face of cnnkit, shaped like the Keras tutorial's notebook::

import cnnkit
(x_train, y_train), (x_test, y_test) = cnnkit.load_data("cifar10")
model = cnnkit.Classifier("tutorial", class_names=cnnkit.CIFAR10_CLASSES)
model.summary()
history = model.fit(x_train, y_train, batch_size=32, epochs=5, validation_split=0.2)
result = model.evaluate(x_test, y_test)          # {"loss": ..., "accuracy": ..., "count": ...}
probabilities = model.predict(x_test)            # (N, classes), rows sum to 1
model.class_names[probabilities[0].argmax()]     # "cat"
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cnnkit.checkpoint import Checkpoint, load_checkpoint, load_weights, save_checkpoint
from cnnkit.data import ImageData, load_dataset, split_train_val
from cnnkit.data.pixels import check_pixels
from cnnkit.data.stored_images import StoredImages
from cnnkit.engine.callbacks import History
from cnnkit.engine.interrupt import StopRequest
from cnnkit.engine.metrics import score_logits

if TYPE_CHECKING:
    from cnnkit.engine.job import TrainingJob
from cnnkit.models import create_model
from cnnkit.recipes import Recipe, load_recipe
from cnnkit.reports.summary import format_summary
from cnnkit.runtime.batched import predict_logits
from cnnkit.runtime.device import resolve_device, resolve_precision
from cnnkit.runtime.normalization import Normalization, center_crop_images
from cnnkit.tasks import get_task

ArrayLike = np.ndarray | torch.Tensor


def load_data(source: str | os.PathLike = "cifar10", image_size: int | None = None):
    """``((x_train, y_train), (x_test, y_test))`` as numpy arrays, like ``keras.datasets``.

    Images are uint8 ``(N, H, W, 3)``, labels int64 ``(N,)``. For a source without a test split
    the test pair is ``(None, None)``. Class names: ``cnnkit.load_dataset(source).train.class_names``.
    """
    splits = load_dataset(source, image_size=image_size)
    test = (splits.test.images.numpy(), splits.test.labels.numpy()) if splits.test else (None, None)
    return (splits.train.images.numpy(), splits.train.labels.numpy()), test


class Classifier:
    """A model with what it needs to be used: class names, input size, normalisation.

    ``fit / evaluate / predict / summary / save / load`` as in Keras. Images go in as uint8
    ``(N, H, W, 3)`` arrays; the classifier scales them itself, the same way every time.
    """

    def __init__(
        self,
        model: str = "tutorial",
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        image_size: int = 32,
        normalization: Normalization | None = None,
        device: str = "auto",
        precision: str = "auto",
        seed: int | None = 0,
        task: str = "single_label",
        **model_arguments: Any,
    ) -> None:
        """``seed`` fixes the initial weights (None: random); fit's own ``seed`` fixes the data order.
        ``task``: ``"single_label"`` (one class an image) or ``"multi_label"`` (any number of the
        ``class_names`` an image: multi-hot labels, a sigmoid and a threshold a label)."""
        if class_names is None:
            if num_classes is None:
                raise ValueError("Give class_names (or num_classes). Received neither.")
            class_names = [str(index) for index in range(num_classes)]
        elif num_classes is not None and num_classes != len(class_names):
            raise ValueError(f"num_classes={num_classes} disagrees with {len(class_names)} class_names.")
        self.class_names = list(class_names)
        self.image_size = image_size
        # Prediction resizes images to this square first and keeps the centre image_size square
        # (recipes trained on random crops evaluate so); the same as image_size otherwise.
        self.resize_size = image_size
        self.normalization = normalization or Normalization()
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        with torch.random.fork_rng(devices=[]):  # seed the initial weights without touching global state
            if seed is not None:
                torch.manual_seed(seed)
            self.network = create_model(
                model, num_classes=len(self.class_names), image_size=image_size, **model_arguments
            )
        self.history: History | None = None
        # The kind of labels (cnnkit.tasks): the loss, the output activation, the decision.
        self.task = get_task(task)
        # Multi-label: a probability threshold a label (choose_thresholds; None: 0.5 each).
        self.thresholds: list[float] | None = None
        # Divides the logits before the output activation (calibrate; None: 1, as trained).
        self.temperature: float | None = None
        self.confidence_map: list[list[float]] | None = None  # tasks.calibration; after the temperature
        # Added to the logits at prediction: a post-hoc adjustment for imbalanced classes (None: none).
        self.logit_offset: list[float] | None = None
        self.recipe: Recipe | None = None  # the recipe it was trained with
        # Test-time augmentation of evaluate and predict: 0 none, 1 mirror, 2 mirror and shifts.
        # Training sets it to the recipe's level; a service may choose another.
        self.tta = 0

    @property
    def model_name(self) -> str:
        return self.network.model_name

    def summary(self, print_fn=print) -> str:
        """Print (and return) the layer table with output shapes and parameter counts."""
        text = format_summary(self.network, self.image_size)
        if print_fn is not None:
            print_fn(text)
        return text

    def fit(
        self,
        x: ArrayLike,
        y: ArrayLike,
        batch_size: int | None = None,
        epochs: float | None = None,
        validation_split: float = 0.0,
        validation_data: tuple[ArrayLike, ArrayLike] | None = None,
        recipe: str | Recipe = "tutorial",
        learning_rate: float | None = None,
        seed: int = 0,
        verbose: bool = True,
        callbacks: Sequence[object] = (),
        patience: int = 0,
        monitor: str = "val_accuracy",
    ) -> History:
        """Train on uint8 images ``x`` and integer labels ``y`` (a multi-label classifier: multi-hot
        ``(N, labels)``), Keras-style.

        The recipe (a name, a YAML file or a ``Recipe``) gives every setting not passed here; it
        defaults to the Keras tutorial's (Adam, batch 32, 5 epochs), which is what this method
        reproduces, while ``cnnkit train`` defaults to the fast recipe. ``validation_split`` holds
        out a stratified, seeded share of ``x`` (not Keras's tail, which on class-sorted data holds
        whole classes out; multi-label data is split by iterative stratification); 0, Keras's
        default, holds out nothing. ``patience`` > 0 stops after that many epochs without a better
        ``monitor`` value and restores the best weights (multi-label: ``val_accuracy`` means mAP).
        ``verbose`` prints a progress bar and a line per epoch.
        """
        train = self._image_data(x, y)
        val = self._image_data(*validation_data) if validation_data else None
        if val is None and validation_split:
            train, val = split_train_val(train, validation_split, seed)
        overrides = {
            "model": self.model_name,
            "batch_size": batch_size,
            "epochs": epochs,
            "learning_rate": learning_rate,
            "validation_split": validation_split,
            "seed": seed,
            "patience": patience,
            "monitor": self.task.monitor_for(monitor),
        }
        chosen = load_recipe(recipe, {key: value for key, value in overrides.items() if value is not None})
        self.normalization = Normalization.for_recipe(chosen.normalization, train.images)
        if verbose:
            from cnnkit.engine.console import ConsoleLogger

            callbacks = [ConsoleLogger(), *callbacks]
        return self.fit_job(self.training_job(train, val, chosen, callbacks=callbacks))

    def training_job(
        self,
        train: ImageData,
        val: ImageData | None,
        recipe: Recipe,
        callbacks: Sequence[object] = (),
        resume_state: dict | None = None,
        stop_request: StopRequest | None = None,
        initialize_from_data: bool = True,
    ) -> TrainingJob:
        """The ``TrainingJob`` that trains this classifier's network on already split data with a
        complete ``recipe``: the classifier gives the network, normalisation, device, precision,
        task and input size; the rest is the run's (see ``cnnkit.engine.job.TrainingJob``)."""
        from cnnkit.engine.job import TrainingData, TrainingJob  # the engine loads only to train

        if train.multi_label != self.task.multi_label:
            raise ValueError(
                f"A {self.task.name} classifier trains on "
                f"{'multi-hot' if self.task.multi_label else 'class'} labels. "
                f"Received: labels of shape {tuple(train.labels.shape)}"
            )
        recipe = recipe.replace(monitor=self.task.monitor_for(recipe.monitor))
        data = TrainingData(train.images, train.labels)
        if val is not None:
            data.val_images, data.val_labels = val.images, val.labels
        return TrainingJob(
            self.network,
            data,
            recipe,
            self.normalization,
            self.device,
            self.precision,
            task=self.task,
            num_classes=len(self.class_names),
            callbacks=callbacks,
            resume_state=resume_state,
            stop_request=stop_request,
            input_size=self.image_size,
            initialize_from_data=initialize_from_data,
        )

    def fit_job(self, job: TrainingJob) -> History:
        """Run ``job`` (from ``training_job``): what ``fit`` and ``cnnkit train`` share. Images
        stored larger than ``image_size`` are cropped to it (random crops in training, the centre
        for validation)."""
        from cnnkit.engine.job import fit

        job.recipe.check_input_size(self.image_size)  # before any step, not in the first one
        self.recipe, self.tta = job.recipe, job.recipe.tta
        self.history = fit(job)
        return self.history

    def evaluate(
        self,
        x: ArrayLike,
        y: ArrayLike,
        batch_size: int = 1024,
        metrics: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """``{"loss", "accuracy", "count"}`` on labelled images (multi-label: loss, mAP, micro- and
        macro-F1 at the thresholds), or the ``metrics`` named (any of
        ``cnnkit.engine.metrics.METRICS`` the task has: ``balanced_accuracy``, ``macro_f1``...)."""
        data = self._image_data(x, y)
        if len(data.labels) == 0:
            raise ValueError("Cannot evaluate on an empty set of images.")
        if metrics is None:
            metrics = self.task.metric_names(False) if self.task.multi_label else ("loss", "accuracy")
        logits = self.logits(data.images, batch_size)
        return score_logits(logits, data.labels, metrics, self.task, self.thresholds)

    def predict(self, x: ArrayLike, batch_size: int = 1024, calibrated: bool = True) -> np.ndarray:
        """Class probabilities, shape ``(N, classes)``: the task's output activation (softmax) of
        the network's logits, calibrated (``calibrate``: the temperature, the confidence map) unless
        ``calibrated`` is False."""
        return self.task.probabilities(self.logits(_as_images(x), batch_size, calibrated)).numpy()

    def logits(
        self, images: torch.Tensor | StoredImages, batch_size: int = 1024, calibrated: bool = True
    ) -> torch.Tensor:
        """The logits ``predict`` and ``evaluate`` start from (float32, CPU): the centre crop the
        network sees, the test-time augmentation, the logit offset (a post-hoc adjustment for
        imbalanced classes, ``adjust_for_imbalance``) and, if ``calibrated``, the temperature and
        the confidence map (``calibrate``; then the log of the calibrated probabilities) included."""
        self.network.to(self.device)
        return predict_logits(
            self.network,
            self.model_view(images),
            self.normalization,
            self.device,
            self.precision,
            batch_size,
            self.tta,
            self.logit_offset,
            self.temperature if calibrated else None,
            self.confidence_map if calibrated else None,
        )

    def calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` as trained (``logits(calibrated=False)``) calibrated as ``logits`` calibrates
        them: the same float32 steps, without a second pass of the network."""
        from cnnkit.tasks.calibration import apply_calibration

        scale = (
            None if self.temperature is None else torch.tensor(1.0 / self.temperature, dtype=torch.float32)
        )
        knots = (
            None if self.confidence_map is None else torch.tensor(self.confidence_map, dtype=torch.float32)
        )
        return apply_calibration(logits, scale, knots)

    def adjust_for_imbalance(self, x: ArrayLike, y: ArrayLike, class_counts: Sequence[int]) -> dict[str, Any]:
        """Post-hoc logit adjustment for a model trained on imbalanced classes: from now on the
        logits get ``-tau * log(prior)`` (prior: ``class_counts`` of the training images, a class
        each), ``tau`` chosen where the balanced accuracy on ``x``, ``y`` (a validation split, never
        the test set) is highest; none when nothing beats the plain logits, or when a class has
        fewer than 5 images in ``x``. Kept by ``save``. Returns ``{"tau", "offset", "before",
        "after", ...}`` (see ``SingleLabelTask.choose_logit_adjustment``)."""
        if self.task.multi_label:
            raise ValueError(
                "adjust_for_imbalance is for single-label classifiers; multi-label ones choose_thresholds."
            )
        data = self._image_data(x, y)
        if len(class_counts) != len(self.class_names):
            raise ValueError(
                f"class_counts needs one count a class ({len(self.class_names)}). "
                f"Received: {len(class_counts)} counts"
            )
        self.logit_offset = None  # chosen for the network's own logits
        choice = self.task.choose_logit_adjustment(self.logits(data.images), data.labels, class_counts)
        self.logit_offset = choice["offset"]
        return choice

    def _image_data(self, x: ArrayLike, y: ArrayLike) -> ImageData:
        return _as_image_data(x, y, self.class_names, self.task.multi_label)

    def model_view(self, images: torch.Tensor) -> torch.Tensor:
        """Images at ``resize_size`` (as a run stores them) cropped to the centre ``image_size``;
        any other size as given."""
        if self.resize_size != self.image_size and tuple(images.shape[1:3]) == (self.resize_size,) * 2:
            return center_crop_images(images, self.image_size)
        return images

    def calibrate(self, x: ArrayLike, y: ArrayLike, confidence_map: bool = True) -> dict[str, Any]:
        """Calibrated probabilities, fitted on ``x``, ``y`` (a validation split, never the test set);
        decisions do not change. From now on the logits are divided by the temperature minimising
        the negative log-likelihood there (temperature scaling), then, if ``confidence_map`` and it
        lowers the expected calibration error of held-out halves of ``x``, the top probability is
        mapped to how often it is right (top-label isotonic calibration, ``tasks.calibration``).
        Kept by ``save``. Returns ``{"temperature", "confidence_map", "before", "after"}``:
        expected calibration error (15 bins), NLL and Brier score on ``x`` as trained and calibrated."""
        from cnnkit.reports.calibration import calibration_metrics
        from cnnkit.tasks.calibration import apply_confidence_map, choose_confidence_map, fit_temperature

        if self.task.multi_label:
            raise ValueError(
                "calibrate is for single-label classifiers; a multi-label one decides by a threshold a "
                "label chosen on validation (choose_thresholds)."
            )
        data = self._image_data(x, y)
        raw = self.logits(data.images, calibrated=False)
        temperature = fit_temperature(self.task, raw, data.labels)
        labels = data.labels.numpy()
        before = calibration_metrics(self.task.probabilities(raw).double().numpy(), labels)
        scaled = self.task.probabilities(raw.double() / temperature)
        knots = choose_confidence_map(scaled.numpy(), labels) if confidence_map else None
        if knots is not None:
            scaled = apply_confidence_map(scaled, torch.tensor(knots, dtype=torch.float64))
        after = calibration_metrics(scaled.numpy(), labels)
        self.temperature, self.confidence_map = temperature, knots
        return {"temperature": temperature, "confidence_map": knots, "before": before, "after": after}

    def choose_thresholds(self, x: ArrayLike, y: ArrayLike) -> dict[str, Any]:
        """Multi-label: a threshold a label where that label's F1 on ``x``, ``y`` (a validation
        split, never the test set) is highest; 0.5 for a label without a positive image there. Kept
        by ``save``. Returns ``{"thresholds", "before", "after"}``: micro- and macro-F1 at 0.5 and
        at the chosen thresholds on ``x``."""
        if not self.task.multi_label:
            raise ValueError("choose_thresholds is for multi-label classifiers (task='multi_label').")
        data = self._image_data(x, y)
        logits = self.logits(data.images)
        chosen = self.task.choose_thresholds(self.task.probabilities(logits).numpy(), data.labels.numpy())
        # A score of exactly 0 or 1 (a saturated float32 sigmoid) is no usable threshold.
        thresholds = [min(max(value, 1e-6), 1 - 1e-6) for value in chosen]
        names = ("micro_f1", "macro_f1")
        before = score_logits(logits, data.labels, names, self.task)
        after = score_logits(logits, data.labels, names, self.task, thresholds)
        self.thresholds = thresholds
        return {
            "thresholds": dict(zip(self.class_names, thresholds, strict=True)),
            "before": {name: before[name] for name in names},
            "after": {name: after[name] for name in names},
        }

    def predict_classes(self, x: ArrayLike, threshold: float | None = None) -> list[str] | list[list[str]]:
        """The most probable class name for each image; multi-label: each image's labels at or above
        their thresholds (``threshold``: one for every label instead), most probable first."""
        limits = self.thresholds if threshold is None else threshold
        return self.task.decided_names(self.predict(x), self.class_names, limits)

    def explain(
        self, x: ArrayLike, classes: int | str | Sequence[int | str] | None = None, batch_size: int = 64
    ) -> np.ndarray:
        """Grad-CAM heatmaps (Selvaraju et al., ICCV 2017): float32 ``(N, H, W)`` in [0, 1], where in
        each image the network found its class; 1 at each map's peak, all 0 where nothing speaks for it.

        The maps cover what the network sees: images at ``resize_size`` are centre-cropped to
        ``image_size`` first (``model_view``), so ``H, W`` is the crop's size; draw them over
        ``model_view(x)`` (``explanation_overlays`` does). ``classes``: None explains each image's
        decided class (``predict``'s most probable, test-time augmentation and logit offset
        included; multi-label: its most probable label), else one class index or name for every
        image, or one an image. Hooks the network and sets it to eval mode while it runs: never
        call it at the same time as another forward pass of this classifier (use a copy).
        """
        from cnnkit.messages import short_repr
        from cnnkit.runtime.explanation import explain_pixels

        images = _as_images(x)
        view = self.model_view(images)
        if len(images) == 0:  # nothing to explain (explain_pixels wants at least one image)
            return np.zeros((0, *view.shape[1:3]), dtype=np.float32)
        if classes is None:
            indices = self.task.top_k(self.predict(images), 1)[0][:, 0].tolist()
        else:
            values = classes.tolist() if hasattr(classes, "tolist") else classes  # numpy, torch
            if isinstance(values, int | str):
                values = [values] * len(images)
            if not isinstance(values, list | tuple) or len(values) != len(images):
                raise ValueError(
                    f"classes must be None, one class index or name, or one an image ({len(images)}). "
                    f"Received: classes={short_repr(classes)}"
                )
            indices = []
            for value in values:
                index = self.class_names.index(value) if value in self.class_names else value
                is_index = isinstance(index, int | np.integer) and not isinstance(index, bool)
                if not is_index or not 0 <= index < len(self.class_names):
                    raise ValueError(
                        f"Each class must be an index in [0, {len(self.class_names)}) or one of the class "
                        f"names ({short_repr(self.class_names)}). Received: classes={short_repr(classes)}"
                    )
                indices.append(int(index))
        self.network.to(self.device)
        return explain_pixels(self.network, view, self.normalization, np.asarray(indices), batch_size)

    def explanation_overlays(
        self,
        x: ArrayLike,
        classes: int | str | Sequence[int | str] | None = None,
        alpha: float | None = None,
        batch_size: int = 64,
    ) -> np.ndarray:
        """``explain``'s heatmaps drawn over the images the network sees (``model_view(x)``) in the
        'jet' colours with weight ``alpha`` (None: ``reports.overlays.DEFAULT_ALPHA``): uint8
        ``(N, H, W, 3)``, ``H, W`` the crop's size. ``classes`` as in ``explain``."""
        from cnnkit.reports.overlays import DEFAULT_ALPHA, heatmap_overlay

        images = _as_images(x)
        heatmaps = self.explain(images, classes, batch_size)
        view = self.model_view(images)
        overlays = np.zeros((*heatmaps.shape, 3), dtype=np.uint8)
        for position, heatmap in enumerate(heatmaps):  # one image read at a time from a store
            pixels = np.asarray(view[position : position + 1])[0]
            overlays[position] = heatmap_overlay(pixels, heatmap, DEFAULT_ALPHA if alpha is None else alpha)
        return overlays

    def save(self, path: str | os.PathLike) -> None:
        """Write a self-describing checkpoint (atomically)."""
        last = self.history.rows[-1] if self.history and self.history.rows else {}
        save_checkpoint(path, self.to_checkpoint(epoch=int(last.get("epoch", 0)), metrics=last))

    def to_checkpoint(
        self, epoch: int = 0, metrics: dict | None = None, config: dict | None = None
    ) -> Checkpoint:
        return Checkpoint(
            model_name=self.model_name,
            model_arguments=self.network.model_arguments,
            class_names=self.class_names,
            image_size=self.image_size,
            normalization=self.normalization,
            state_dict=self.network.state_dict(),
            resize_size=self.resize_size,
            task=self.task.name,
            logit_offset=self.logit_offset,
            thresholds=self.thresholds,
            temperature=self.temperature,
            confidence_map=self.confidence_map,
            recipe=self.recipe,
            config=config or {},
            epoch=epoch,
            metrics=metrics or {},
        )

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", precision: str = "auto") -> Classifier:
        """Rebuild a classifier from nothing but a checkpoint file."""
        return cls.from_checkpoint(load_checkpoint(path), device=device, precision=precision, source=path)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Checkpoint,
        device: str = "auto",
        precision: str = "auto",
        source: str | os.PathLike = "the checkpoint",
    ) -> Classifier:
        """The classifier ``checkpoint`` describes; ``source`` names it in errors."""
        arguments = dict(checkpoint.model_arguments)
        arguments.pop("num_classes", None)
        image_size = arguments.pop("image_size", checkpoint.image_size)
        classifier = cls(
            checkpoint.model_name,
            class_names=checkpoint.class_names,
            image_size=image_size,
            normalization=checkpoint.normalization,
            device=device,
            precision=precision,
            task=checkpoint.task,
            **arguments,
        )
        load_weights(classifier.network, checkpoint.state_dict, source)
        classifier.network.to(classifier.device, memory_format=torch.channels_last)
        classifier.recipe, classifier.tta = checkpoint.recipe, checkpoint.tta
        classifier.resize_size = checkpoint.resize_size
        classifier.logit_offset = checkpoint.logit_offset
        classifier.thresholds = checkpoint.thresholds
        classifier.temperature = checkpoint.temperature
        classifier.confidence_map = checkpoint.confidence_map
        return classifier


def _as_images(x: ArrayLike | StoredImages) -> torch.Tensor | StoredImages:
    check_pixels(x, name="x")
    if isinstance(x, StoredImages):  # a large data set's images: read batch by batch, not copied
        return x
    return torch.as_tensor(x)


def _as_image_data(
    x: ArrayLike, y: ArrayLike, class_names: list[str], multi_label: bool = False
) -> ImageData:
    images = _as_images(x)
    if multi_label:
        labels = torch.as_tensor(y).long()
        if labels.shape != (len(images), len(class_names)) or bool(((labels != 0) & (labels != 1)).any()):
            raise ValueError(
                f"A multi-label classifier takes multi-hot labels of 0 and 1, shape (N, {len(class_names)}) "
                f"for {len(images)} images. Received: y of shape {tuple(labels.shape)}"
            )
        return ImageData(images=images, labels=labels, class_names=class_names)
    labels = torch.as_tensor(y).long().reshape(-1)  # Keras-style (N, 1) labels are welcome too
    if len(labels) != len(images):
        raise ValueError(f"x and y differ in length. Received: len(x)={len(images)}, len(y)={len(labels)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(
            f"Labels must be in [0, {len(class_names) - 1}]. Received: min={labels.min().item()}, "
            f"max={labels.max().item()}"
        )
    return ImageData(images=images, labels=labels, class_names=class_names)
