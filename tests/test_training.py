import io

import numpy as np
import pytest
import torch

from cnnkit.api import Classifier
from cnnkit.engine.console import format_epoch_line
from cnnkit.engine.device import resolve_device, resolve_precision
from cnnkit.engine.preprocess import InputTransform, Normalization
from tests.conftest import CLASS_NAMES, make_quadrant_images


def train_quadrants(epochs=4, seed=0, precision="auto"):
    images, labels = make_quadrant_images(320, seed=3)
    classifier = Classifier(
        "tutorial", class_names=CLASS_NAMES, image_size=16, device="cpu", precision=precision
    )
    history = classifier.fit(
        images,
        labels,
        batch_size=32,
        epochs=epochs,
        validation_split=0.25,
        seed=seed,
        verbose=False,
    )
    return classifier, history


def test_a_short_run_really_learns():
    classifier, history = train_quadrants()
    losses = history.history["loss"]
    assert losses[-1] < losses[0] * 0.5
    assert history.history["val_accuracy"][-1] >= 0.9  # chance is 0.25
    test_images, test_labels = make_quadrant_images(80, seed=4)
    result = classifier.evaluate(test_images, test_labels)
    assert result["count"] == 80 and result["accuracy"] >= 0.9


def test_history_reads_like_keras():
    _, history = train_quadrants(epochs=2)
    assert set(history.history) >= {
        "epoch",
        "seconds",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
    }
    assert history.history["epoch"] == [1, 2]


def test_same_seed_gives_the_same_metrics_on_cpu():
    _, first = train_quadrants(epochs=2, seed=7)
    _, second = train_quadrants(epochs=2, seed=7)
    _, other = train_quadrants(epochs=2, seed=8)
    assert first.history["loss"] == second.history["loss"]
    assert first.history["loss"] != other.history["loss"]


def test_predict_gives_probabilities_and_class_names():
    classifier, _ = train_quadrants(epochs=3)
    images, labels = make_quadrant_images(8, seed=5)
    probabilities = classifier.predict(images)
    assert probabilities.shape == (8, 4)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    assert classifier.predict_classes(images) == [CLASS_NAMES[label] for label in labels]


def test_images_must_be_uint8_pixels():
    classifier = Classifier("tutorial", class_names=CLASS_NAMES, image_size=16, device="cpu")
    images, labels = make_quadrant_images(8)
    with pytest.raises(ValueError, match=r"don't divide by 255\. Received: dtype=float64"):
        classifier.fit(images / 255.0, labels, epochs=1, verbose=False)
    with pytest.raises(ValueError, match=r"Labels must be in \[0, 3\]"):
        classifier.fit(images, labels + 4, epochs=1, verbose=False)


def test_a_non_finite_loss_stops_training_naming_epoch_and_step():
    classifier = Classifier(
        "tutorial", class_names=CLASS_NAMES, image_size=16, device="cpu", precision="fp32"
    )
    with torch.no_grad():
        classifier.network.dense2.bias.fill_(float("nan"))
    images, labels = make_quadrant_images(64)
    with pytest.raises(FloatingPointError, match="epoch 1/1, step 1"):
        classifier.fit(images, labels, epochs=1, verbose=False)


def test_preprocessing_scales_and_uses_channels_last():
    images = torch.full((2, 4, 4, 3), 255, dtype=torch.uint8)
    inputs = InputTransform(Normalization(), torch.device("cpu"))(images)
    assert inputs.shape == (2, 3, 4, 4) and inputs.is_contiguous(memory_format=torch.channels_last)
    assert torch.all(inputs == 1.0)
    standardized = InputTransform(Normalization(mean=(0.5,) * 3, std=(0.25,) * 3), torch.device("cpu"))(
        images
    )
    assert torch.allclose(standardized, torch.full_like(standardized, 2.0))


def test_normalization_from_images_measures_channel_statistics():
    images = torch.zeros(10, 2, 2, 3, dtype=torch.uint8)
    images[..., 0] = 255
    images[5:, :, :, 1] = 255
    normalization = Normalization.from_images(images)
    assert normalization.mean == pytest.approx((1.0, 0.5, 0.0))
    assert normalization.std[1] == pytest.approx(0.5, abs=0.02)


def test_device_and_precision_choices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_precision("fp32", torch.device("cpu")) == torch.float32
    assert resolve_precision("auto", torch.device("cpu")) in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="Received: precision='fp64'"):
        resolve_precision("fp64", torch.device("cpu"))
    with pytest.raises(ValueError, match="Received: device='gpu'"):
        resolve_device("gpu")


def test_epoch_line_is_keras_like():
    line = format_epoch_line(
        1,
        5,
        {
            "seconds": 6.2,
            "ms_per_sample": 0.15,
            "loss": 1.38531,
            "accuracy": 0.4956,
            "val_loss": 1.1217,
            "val_accuracy": 0.603,
        },
    )
    assert line == (
        "Epoch 1/5 - 6.2s - 0.150 ms/sample - loss: 1.3853 - accuracy: 0.4956 - "
        "val_loss: 1.1217 - val_accuracy: 0.6030"
    )


def test_fit_prints_progress_and_epoch_lines():
    images, labels = make_quadrant_images(64)
    classifier = Classifier("tutorial", class_names=CLASS_NAMES, image_size=16, device="cpu")
    stream = io.StringIO()
    from cnnkit.engine.console import ConsoleLogger
    from cnnkit.engine.trainer import TrainingData, fit
    from cnnkit.recipes import get_recipe

    fit(
        classifier.network,
        TrainingData(torch.from_numpy(images), torch.from_numpy(labels)),
        get_recipe("tutorial").replace(epochs=1),
        Normalization(),
        torch.device("cpu"),
        torch.float32,
        callbacks=[ConsoleLogger(stream)],
    )
    output = stream.getvalue()
    assert "Epoch 1/1" in output and "2/2 [" in output and "\r" not in output  # plain lines off a terminal


def test_process_setup_flushes_denormals_to_zero():
    from cnnkit.engine.device import configure_process

    configure_process()

    denormal = torch.tensor([1e-40], dtype=torch.float32)
    assert (denormal * 1.0).item() == 0.0
