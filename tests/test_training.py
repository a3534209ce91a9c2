import io

import numpy as np
import pytest
import torch

from cnnkit.api import Classifier
from cnnkit.engine.console import format_epoch_line
from cnnkit.runtime.device import resolve_device, resolve_precision
from cnnkit.runtime.normalization import InputTransform, Normalization
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
    from cnnkit.engine.job import TrainingData, fit
    from cnnkit.recipes import get_recipe

    data = TrainingData(torch.from_numpy(images), torch.from_numpy(labels))
    recipe = get_recipe("tutorial").replace(epochs=1)
    fit(_job(classifier.network, data, recipe, callbacks=[ConsoleLogger(stream)]))
    output = stream.getvalue()
    assert "Epoch 1/1" in output and "2/2 [" in output and "\r" not in output  # plain lines off a terminal


def test_process_setup_flushes_denormals_to_zero():
    from cnnkit.runtime.device import configure_process

    configure_process()

    denormal = torch.tensor([1e-40], dtype=torch.float32)
    assert (denormal * 1.0).item() == 0.0


def _job(model, data, recipe, precision=torch.float32, **options):
    from cnnkit.engine.job import TrainingJob

    return TrainingJob(model, data, recipe, Normalization(), torch.device("cpu"), precision, **options)


def _tiny_data(count: int = 64):
    from cnnkit.engine.job import TrainingData

    images, labels = make_quadrant_images(count)
    return TrainingData(
        torch.from_numpy(images[:48]),
        torch.from_numpy(labels[:48]),
        torch.from_numpy(images[48:]),
        torch.from_numpy(labels[48:]),
    )


def test_callbacks_hear_only_the_hooks_they_have_and_a_stop_reaches_on_interrupt():
    from cnnkit.engine.interrupt import StopRequest, TrainingInterrupted
    from cnnkit.engine.job import fit
    from cnnkit.models import create_model
    from cnnkit.recipes import get_recipe

    class EpochsOnly:  # a plain object with one hook: no base class needed
        def __init__(self):
            self.epochs = []

        def on_epoch_end(self, state):
            self.epochs.append((state.epoch, round(state.metrics["val_accuracy"], 6)))

    class Everything:
        def __init__(self):
            self.events = []

        def __getattr__(self, name):
            if name.startswith("on_"):
                return lambda state: self.events.append(name)
            raise AttributeError(name)

    model = create_model("tutorial", num_classes=4, image_size=16)
    listeners = [EpochsOnly(), Everything()]
    recipe = get_recipe("tutorial").replace(epochs=2, batch_size=16)
    history = fit(_job(model, _tiny_data(), recipe, callbacks=listeners))
    assert [epoch for epoch, _ in listeners[0].epochs] == [1, 2]
    assert [value for _, value in listeners[0].epochs] == [
        round(v, 6) for v in history.history["val_accuracy"]
    ]
    events = listeners[1].events
    assert events[0] == "on_train_begin" and events[-1] == "on_train_end"
    assert events.count("on_epoch_begin") == events.count("on_epoch_end") == 2 and "on_progress" in events

    class StopNow(StopRequest):
        def __bool__(self):
            self.signal_number = 2
            return True

    saved = []

    class Saver:
        def on_interrupt(self, view):
            saved.append(view.completed_epochs)
            return "somewhere.pt"

    with pytest.raises(TrainingInterrupted, match=r"its state is saved in somewhere\.pt"):
        model = create_model("tutorial", num_classes=4, image_size=16)
        fit(_job(model, _tiny_data(), recipe, callbacks=[Saver()], stop_request=StopNow()))
    assert saved == [0]


def test_fp16_trains_with_a_gradient_scaler():
    from cnnkit.engine.trainer import Trainer
    from cnnkit.models import create_model
    from cnnkit.recipes import get_recipe

    recipe = get_recipe("tutorial").replace(epochs=1, batch_size=16)
    model = create_model("tutorial", num_classes=4, image_size=16)
    trainer = Trainer(_job(model, _tiny_data(), recipe, torch.float16))
    assert trainer.scaler.is_enabled()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    history = trainer.fit()
    assert np.isfinite(history.rows[0]["loss"])
    assert any(not torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert trainer.state_dict()["training"]["grad_scaler"]["scale"] > 0  # resumes with its scale
    plain = Trainer(_job(create_model("tutorial", num_classes=4, image_size=16), _tiny_data(), recipe))
    assert not plain.scaler.is_enabled()


def test_fit_leaves_the_process_settings_alone():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        images, labels = make_quadrant_images(32)
        classifier = Classifier("tutorial", class_names=CLASS_NAMES, image_size=16, device="cpu")
        classifier.fit(images, labels, epochs=1, verbose=False)
        assert torch.get_num_threads() == 1  # a library call does not reconfigure the process
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("image_size", [16, 12])  # 12: random crops in training, centre crops validated
def test_training_on_a_store_on_disk_equals_training_in_memory(tmp_path, image_size):
    """Issue 12: batches read from disk (one ahead, in a thread) train exactly as in-memory ones."""
    from cnnkit.data import load_dataset, split_train_val
    from cnnkit.engine.job import TrainingData
    from cnnkit.engine.training_state import data_fingerprint
    from cnnkit.recipes import get_recipe
    from tests.conftest import write_image_folder

    images, labels = make_quadrant_images(96, seed=5)
    write_image_folder(tmp_path / "quadrants", images, labels)
    recipe = get_recipe("tutorial").replace(epochs=2, batch_size=16, normalization="standardize")
    if image_size < 16:
        recipe = recipe.replace(crop_scale=(0.5, 1.0))
    runs = []
    for in_memory in (True, False):
        splits = load_dataset(tmp_path / "quadrants", progress=False, in_memory=in_memory)
        train, val = split_train_val(splits.train, 0.25, seed=0)
        assert isinstance(train.images, torch.Tensor) == in_memory
        classifier = Classifier(
            "tutorial",
            class_names=CLASS_NAMES,
            image_size=image_size,
            normalization=Normalization.for_recipe("standardize", train.images),
            device="cpu",
            precision="fp32",
        )
        classifier.resize_size = 16
        history = classifier.fit_job(classifier.training_job(train, val, recipe))
        fingerprint = data_fingerprint(TrainingData(train.images, train.labels, val.images, val.labels))
        runs.append((classifier, history.rows, fingerprint, classifier.evaluate(val.images, val.labels)))
    (memory, memory_rows, memory_print, memory_score), (disk, disk_rows, disk_print, disk_score) = runs
    assert memory.normalization == disk.normalization and memory_print == disk_print
    timing = {"seconds", "ms_per_sample"}
    assert [{k: v for k, v in row.items() if k not in timing} for row in memory_rows] == [
        {k: v for k, v in row.items() if k not in timing} for row in disk_rows
    ]
    for name, weight in memory.network.state_dict().items():
        assert torch.equal(weight, disk.network.state_dict()[name]), name
    assert memory_score == disk_score
