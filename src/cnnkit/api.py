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
from typing import Any

import numpy as np
import torch

from cnnkit.checkpoint import Checkpoint, load_checkpoint, load_weights, save_checkpoint
from cnnkit.data import ImageData, load_dataset, split_train_val
from cnnkit.data.pixels import check_pixels
from cnnkit.data.stored_images import StoredImages
from cnnkit.engine.callbacks import History
from cnnkit.engine.device import resolve_device, resolve_precision
from cnnkit.engine.evaluation import evaluate_tensors, predict_logits
from cnnkit.engine.interrupt import StopRequest
from cnnkit.engine.preprocess import Normalization, center_crop_images
from cnnkit.models import create_model
from cnnkit.recipes import Recipe, load_recipe
from cnnkit.reports.summary import format_summary

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
        **model_arguments: Any,
    ) -> None:
        """``seed`` fixes the initial weights (None: random); fit's own ``seed`` fixes the data order."""
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
        """Train on uint8 images ``x`` and integer labels ``y``, Keras-style.

        The recipe (a name, a YAML file or a ``Recipe``) gives every setting not passed here; it
        defaults to the Keras tutorial's (Adam, batch 32, 5 epochs), which is what this method
        reproduces, while ``cnnkit train`` defaults to the fast recipe. ``validation_split`` holds
        out a stratified, seeded share of ``x`` (not Keras's tail, which on class-sorted data holds
        whole classes out); 0, Keras's default, holds out nothing. ``patience`` > 0 stops after
        that many epochs without a better ``monitor`` value and restores the best weights.
        ``verbose`` prints a progress bar and a line per epoch.
        """
        train = _as_image_data(x, y, self.class_names)
        val = _as_image_data(*validation_data, self.class_names) if validation_data else None
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
            "monitor": monitor,
        }
        chosen = load_recipe(recipe, {key: value for key, value in overrides.items() if value is not None})
        self.normalization = Normalization.for_recipe(chosen.normalization, train.images)
        if verbose:
            from cnnkit.engine.console import ConsoleLogger

            callbacks = [ConsoleLogger(), *callbacks]
        return self.fit_data(train, val, chosen, callbacks=callbacks)

    def fit_data(
        self,
        train: ImageData,
        val: ImageData | None,
        recipe: Recipe,
        callbacks: Sequence[object] = (),
        resume_state: dict | None = None,
        stop_request: StopRequest | None = None,
        initialize_from_data: bool = True,
    ) -> History:
        """Train on already split data with a complete ``recipe`` (what ``fit`` and the CLI share).

        ``callbacks`` hear about the run (``cnnkit.engine.callbacks``); ``resume_state``
        continues a stopped run (``Trainer.state_dict()``); ``stop_request`` makes training save
        and stop between steps (see ``cnnkit.engine.interrupt``). Images stored larger than
        ``image_size`` are cropped to it (random crops in training, the centre for validation);
        ``initialize_from_data`` False keeps a data-initialised first layer as loaded.
        """
        from cnnkit.engine.trainer import TrainingData, fit  # the trainer loads only to train

        recipe.check_input_size(self.image_size)  # before any step, not in the first one
        self.recipe, self.tta = recipe, recipe.tta
        data = TrainingData(train.images, train.labels)
        if val is not None:
            data.val_images, data.val_labels = val.images, val.labels
        self.history = fit(
            self.network,
            data,
            recipe,
            self.normalization,
            self.device,
            self.precision,
            callbacks=callbacks,
            resume_state=resume_state,
            stop_request=stop_request,
            input_size=self.image_size,
            initialize_from_data=initialize_from_data,
        )
        return self.history

    def evaluate(self, x: ArrayLike, y: ArrayLike, batch_size: int = 1024) -> dict[str, float]:
        """``{"loss", "accuracy", "count"}`` on labelled images."""
        data = _as_image_data(x, y, self.class_names)
        self.network.to(self.device)
        return evaluate_tensors(
            self.network,
            self.model_view(data.images),
            data.labels,
            self.normalization,
            self.device,
            self.precision,
            batch_size,
            self.tta,
        )

    def predict(self, x: ArrayLike, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities, shape ``(N, classes)``: softmax of the network's logits."""
        images = self.model_view(_as_images(x))
        self.network.to(self.device)
        logits = predict_logits(
            self.network, images, self.normalization, self.device, self.precision, batch_size, self.tta
        )
        return torch.softmax(logits, dim=1).numpy()

    def model_view(self, images: torch.Tensor) -> torch.Tensor:
        """Images at ``resize_size`` (as a run stores them) cropped to the centre ``image_size``;
        any other size as given."""
        if self.resize_size != self.image_size and tuple(images.shape[1:3]) == (self.resize_size,) * 2:
            return center_crop_images(images, self.image_size)
        return images

    def predict_classes(self, x: ArrayLike) -> list[str]:
        """The most probable class name for each image."""
        return [self.class_names[index] for index in self.predict(x).argmax(1)]

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
            **arguments,
        )
        load_weights(classifier.network, checkpoint.state_dict, source)
        classifier.network.to(classifier.device, memory_format=torch.channels_last)
        classifier.recipe, classifier.tta = checkpoint.recipe, checkpoint.tta
        classifier.resize_size = checkpoint.resize_size
        return classifier


def _as_images(x: ArrayLike | StoredImages) -> torch.Tensor | StoredImages:
    check_pixels(x, name="x")
    if isinstance(x, StoredImages):  # a large data set's images: read batch by batch, not copied
        return x
    return torch.as_tensor(x)


def _as_image_data(x: ArrayLike, y: ArrayLike, class_names: list[str]) -> ImageData:
    images = _as_images(x)
    labels = torch.as_tensor(y).long().reshape(-1)  # Keras-style (N, 1) labels are welcome too
    if len(labels) != len(images):
        raise ValueError(f"x and y differ in length. Received: len(x)={len(images)}, len(y)={len(labels)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(
            f"Labels must be in [0, {len(class_names) - 1}]. Received: min={labels.min().item()}, "
            f"max={labels.max().item()}"
        )
    return ImageData(images=images, labels=labels, class_names=class_names)
