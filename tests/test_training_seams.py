"""Issue 20's seams: metrics as objects, callbacks that see a view and may stop training, the
task that owns the loss and the decision, one training job, the class-balanced sampler."""

import io
import re

import numpy as np
import pytest
import torch

from cnnkit.engine import metrics
from cnnkit.engine.console import ConsoleLogger
from cnnkit.engine.job import TrainingData, TrainingJob, fit
from cnnkit.engine.metrics import METRICS, Metric, MetricSet, higher_is_better, score_logits
from cnnkit.engine.monitoring import BestEpoch, EarlyStopping
from cnnkit.engine.trainer import Trainer
from cnnkit.models import create_model
from cnnkit.recipes import get_recipe
from cnnkit.runtime.normalization import Normalization
from cnnkit.tasks import SINGLE_LABEL, get_task
from tests.conftest import make_quadrant_images


def _data(count: int = 64, keep: list[int] | None = None) -> TrainingData:
    images, labels = make_quadrant_images(count)
    if keep is not None:  # an imbalanced set: this many images of each class
        rows = np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in enumerate(keep)])
        images, labels = images[rows], labels[rows]
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = torch.from_numpy(images[order]), torch.from_numpy(labels[order])
    cut = len(labels) * 3 // 4
    return TrainingData(images[:cut], labels[:cut], images[cut:], labels[cut:])


def _job(recipe=None, data=None, **options) -> TrainingJob:
    recipe = recipe or get_recipe("tutorial").replace(epochs=2, batch_size=16)
    model = create_model("tutorial", num_classes=4, image_size=16)
    return TrainingJob(model, data or _data(), recipe, Normalization(), torch.device("cpu"), **options)


# -- metrics ---------------------------------------------------------------------------------------
def test_metrics_agree_with_their_textbook_definitions_batch_by_batch_or_at_once():
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 0, 0, 2])
    logits = torch.nn.functional.one_hot(predicted, 3).float()
    names = ("loss", "accuracy", "balanced_accuracy", "macro_f1")
    at_once = score_logits(logits, targets, names)
    assert at_once["accuracy"] == pytest.approx(5 / 8)
    assert at_once["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2 + 1 / 2) / 3)  # mean recall
    f1 = [2 * 3 / (2 * 3 + 2 + 1), 2 * 1 / (2 * 1 + 1 + 1), 2 * 1 / (2 * 1 + 0 + 1)]  # 2tp/(2tp+fp+fn)
    assert at_once["macro_f1"] == pytest.approx(sum(f1) / 3)
    in_batches = MetricSet(names, 3)
    for part in (slice(0, 3), slice(3, 8)):
        loss_sum = SINGLE_LABEL.evaluation_loss_sum(logits[part], targets[part])
        in_batches.update(loss_sum, logits[part], targets[part])
    assert in_batches.values() == pytest.approx({k: v for k, v in at_once.items() if k != "count"})
    # The states are what a stopped run saves: a set rebuilt from them gives the same values.
    again = MetricSet(names, 3, states=in_batches.states(), count=in_batches.count)
    assert again.values() == in_batches.values()
    in_batches.reset()
    assert in_batches.count == 0 and in_batches.values()["accuracy"] == 0


def test_a_metric_knows_its_direction_and_an_unknown_one_is_refused_in_one_line():
    assert higher_is_better("val_macro_f1") and higher_is_better("accuracy")
    assert not higher_is_better("val_loss")
    with pytest.raises(ValueError, match=r"allowed are val_loss, val_accuracy.*Received: monitor='val_f2'"):
        higher_is_better("val_f2")


def test_a_metric_added_in_one_place_can_be_monitored_and_reaches_history_and_epoch_line(monkeypatch):
    class TopTwo(Metric):
        name = "top2"

        def batch_state(self, loss_sum, logits, targets):
            return (logits.topk(2, dim=1).indices == targets[:, None]).any(1).sum()

    monkeypatch.setitem(METRICS, "top2", TopTwo)
    stream = io.StringIO()
    recipe = get_recipe("tutorial").replace(epochs=2, batch_size=16, monitor="val_top2")
    history = fit(_job(recipe, callbacks=[ConsoleLogger(stream)]))
    rows = history.rows
    assert all(0 <= row["val_accuracy"] <= row["val_top2"] <= 1 for row in rows)
    best = max(range(2), key=lambda index: (rows[index]["val_top2"], -index))
    assert history.best_epoch == best + 1  # best.pt follows the metric's own direction
    assert "val_top2:" in stream.getvalue()
    assert metrics.check_metric_name("val_top2") == "val_top2"


# -- callbacks -------------------------------------------------------------------------------------
def test_a_callback_can_stop_training_and_the_reason_is_printed():
    class StopAfterFirst:
        def on_epoch_end(self, state):
            state.view.request_stop("Stopped by my callback.")

    stream = io.StringIO()
    recipe = get_recipe("tutorial").replace(epochs=3, batch_size=16)
    history = fit(_job(recipe, callbacks=[StopAfterFirst(), ConsoleLogger(stream)]))
    assert len(history.rows) == 1
    assert stream.getvalue().rstrip().endswith("Stopped by my callback.")


def test_early_stopping_is_a_callback_that_restores_the_best_weights():
    model = torch.nn.Linear(2, 2)

    class View:
        has_validation, history, reason = True, None, None
        model = None

        def request_stop(self, reason):
            self.reason = reason

    view = View()
    view.model = model
    stopping = EarlyStopping("val_loss", patience=2)

    def epoch(number, value):
        state = type(
            "State", (), {"metrics": {"val_loss": value}, "epoch": number, "view": view, "model": model}
        )
        stopping.on_epoch_end(state)

    epoch(1, 1.0)
    best = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1)
    epoch(2, 1.5)
    assert view.reason is None
    epoch(3, 1.1)
    assert view.reason.startswith("Early stopping: val_loss has not improved for 2 epochs")
    restored = EarlyStopping("val_loss", patience=2)
    restored.load_state_dict(stopping.state_dict())  # what --resume gives back
    restored.on_train_end(view)
    assert torch.equal(model.weight, best["weight"])


def test_callback_state_is_saved_in_the_training_state_and_given_back_on_resume():
    class Counter:
        state_key = "counter"

        def __init__(self):
            self.epochs = 0

        def on_epoch_end(self, state):
            self.epochs += 1

        def state_dict(self):
            return {"epochs": self.epochs}

        def load_state_dict(self, state):
            self.epochs = state["epochs"]

    recipe = get_recipe("tutorial").replace(epochs=3, batch_size=16)
    counter = Counter()
    trainer = Trainer(_job(recipe, callbacks=[counter]))
    trainer.epochs = 2  # stop after two epochs, as a stopped run would have
    trainer.fit()
    state = trainer.state_dict()
    assert state["training"]["callbacks"]["counter"] == {"epochs": 2}
    assert state["training"]["callbacks"]["best_epoch"]["epoch"] in (1, 2)
    fresh = Counter()
    resumed = Trainer(_job(recipe, callbacks=[fresh]))
    resumed.load_state_dict(state)
    assert fresh.epochs == 2 and resumed.history.best_epoch == trainer.history.best_epoch


def test_best_epoch_falls_back_to_the_training_figure_without_validation():
    data = _data()
    data.val_images = data.val_labels = None
    recipe = get_recipe("tutorial").replace(epochs=2, batch_size=16, monitor="val_loss")
    history = fit(_job(recipe, data))
    losses = history.history["loss"]
    assert history.best_epoch == 1 + losses.index(min(losses))
    assert BestEpoch("val_loss").monitor == "val_loss"


# -- task, metrics shown, sampler ------------------------------------------------------------------
def test_imbalanced_data_adds_balanced_accuracy_and_macro_f1_to_the_epoch_lines():
    balanced = fit(_job(data=_data()))
    assert "val_balanced_accuracy" not in balanced.rows[0]
    skewed = fit(_job(data=_data(keep=[40, 4, 4, 4])))
    row = skewed.rows[0]
    assert {"balanced_accuracy", "macro_f1", "val_balanced_accuracy", "val_macro_f1"} <= set(row)


def test_the_task_decides_predictions_and_is_recorded_in_checkpoints(tmp_path):
    from cnnkit.api import Classifier
    from cnnkit.checkpoint import load_checkpoint

    assert get_task(None) is SINGLE_LABEL
    with pytest.raises(ValueError, match="Received: task='multi'"):
        get_task("multi")
    probabilities = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    assert SINGLE_LABEL.decide(probabilities).tolist() == [1, 0]
    indices, values = SINGLE_LABEL.top_k(probabilities, 2)
    assert indices.tolist() == [[1, 2], [0, 2]] and values.tolist() == [[0.7, 0.2], [0.5, 0.3]]
    classifier = Classifier("tutorial", num_classes=3, image_size=16, device="cpu")
    classifier.save(tmp_path / "model.pt")
    assert load_checkpoint(tmp_path / "model.pt").task == "single_label"


def test_the_balanced_sampler_draws_every_class_alike_seeded_and_resumably():
    data = _data(keep=[40, 4, 4, 4])
    recipe = get_recipe("tutorial").replace(epochs=1, batch_size=16, sampler="balanced")
    trainer = Trainer(_job(recipe, data))
    order = trainer._begin_epoch(1).order
    drawn = torch.bincount(data.train_labels[order], minlength=4)
    assert len(order) == len(data.train_labels) and drawn.min() >= 3  # plain shuffling: as few as 1 or 2
    again = Trainer(_job(recipe, data))._begin_epoch(1).order
    assert torch.equal(order, again)  # the recipe's seed decides the draw
    shuffled = Trainer(_job(recipe.replace(sampler="shuffle"), data))._begin_epoch(1).order
    assert sorted(shuffled.tolist()) == list(range(len(data.train_labels)))
    with pytest.raises(ValueError, match=r"'shuffle' or 'balanced'\. Received: sampler='even'"):
        recipe.replace(sampler="even")


# -- end to end: a skewed folder, monitored by macro-F1, compared and tuned on ---------------------
def test_a_skewed_folder_monitored_by_macro_f1_reports_and_compares_it(tmp_path, capsys):
    import json

    from cnnkit.checkpoint import load_checkpoint
    from cnnkit.cli import main
    from cnnkit.experiments.compare import best_other_metrics
    from cnnkit.reports.training_curves import read_metrics_csv
    from tests.conftest import write_image_folder

    images, labels = make_quadrant_images(200, seed=4)
    keep = np.concatenate([np.flatnonzero(labels == c)[: 40 if c == 0 else 8] for c in range(4)])
    data = write_image_folder(tmp_path / "skewed", images[keep], labels[keep])
    out = tmp_path / "runs"
    command = ["train", "--data", str(data), "--out", str(out), "--recipe", "tutorial", "--epochs", "3"]
    assert main([*command, "--name", "f1", "--monitor", "val_macro_f1", "--quiet"]) == 0
    result_line = capsys.readouterr().out.splitlines()[0]  # imbalanced: balanced accuracy and macro-F1 too
    assert re.search(r"accuracy \d\.\d{4} - balanced accuracy \d\.\d{4} - macro-F1 \d\.\d{4}$", result_line)
    rows = read_metrics_csv(out / "f1" / "metrics.csv")
    scores = [row["val_macro_f1"] for row in rows]
    report = json.loads((out / "f1" / "report.json").read_text())
    assert report["best_epoch"] == 1 + scores.index(max(scores))  # best.pt by macro-F1, higher better
    assert {"balanced_accuracy", "macro_f1"} <= set(report["evaluation"])  # imbalanced: both reported
    adjustment = report["decision_adjustment"]  # chosen on validation, by default, for skewed classes
    assert adjustment["chosen_on"] == "validation" and -1 <= adjustment["tau"] <= 2
    assert load_checkpoint(out / "f1" / "best.pt").logit_offset == adjustment["logit_offset"]
    assert best_other_metrics(rows)["val_macro_f1"] == max(scores)
    assert main(["compare", str(out / "f1"), "--out", str(tmp_path / "table")]) == 0
    output = capsys.readouterr().out
    assert "best val_macro_f1" in output.splitlines()[0] and f"{max(scores):.4f}" in output
    # Lower is better for a loss: compare and tune read the direction from the metric.
    history = [{"epoch": 1, "val_loss": 0.5, "val_top": 1}, {"epoch": 2, "val_loss": 0.4, "val_top": 2}]
    assert best_other_metrics(history) == {}  # accuracy and loss have their own columns; unknown left out


def test_tuning_follows_the_monitored_metrics_direction():
    from cnnkit.experiments.study import StudySettings

    for monitor, maximize in (("val_macro_f1", True), ("val_loss", False), ("val_balanced_accuracy", True)):
        recipe = get_recipe("tutorial").replace(monitor=monitor)
        assert StudySettings("data", recipe, {}, 0).maximize is maximize


# -- post-hoc logit adjustment ---------------------------------------------------------------------
def test_the_logit_adjustment_is_chosen_for_balanced_accuracy_on_the_given_split():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 4
    logits = torch.nn.functional.one_hot(labels, 4).float() * 2 + torch.randn(400, 4, generator=generator)
    logits[:, 0] += 2.5  # a network that favours its largest class
    counts = [900, 50, 30, 20]
    choice = SINGLE_LABEL.choose_logit_adjustment(logits, labels, counts)
    assert choice["tau"] > 0 and choice["after"] > choice["before"] + 0.1
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    expected = (-choice["tau"] * torch.log(prior)).tolist()
    assert choice["offset"] == pytest.approx(expected, abs=1e-5)
    fair = torch.nn.functional.one_hot(labels, 4).float()  # nothing to correct: no offset
    assert SINGLE_LABEL.choose_logit_adjustment(fair, labels, counts)["offset"] is None


def test_a_logit_offset_travels_with_the_checkpoint_and_shifts_every_prediction(tmp_path):
    from cnnkit.api import Classifier
    from cnnkit.checkpoint import Checkpoint

    images, labels = make_quadrant_images(40)
    classifier = Classifier("tutorial", num_classes=4, image_size=16, device="cpu")
    plain = classifier.logits(torch.from_numpy(images))
    choice = classifier.adjust_for_imbalance(images, labels, [100, 10, 10, 10])
    assert classifier.logit_offset == choice["offset"]
    classifier.logit_offset = [0.0, 1.0, 2.0, 3.0]
    classifier.save(tmp_path / "model.pt")
    loaded = Classifier.load(tmp_path / "model.pt", device="cpu")
    assert loaded.logit_offset == [0.0, 1.0, 2.0, 3.0]
    expected = torch.softmax(plain + torch.tensor([0.0, 1.0, 2.0, 3.0]), dim=1).numpy()
    np.testing.assert_allclose(loaded.predict(images), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"class_counts needs one count a class \(4\)\. Received: 2"):
        classifier.adjust_for_imbalance(images, labels, [1, 2])
    with pytest.raises(ValueError, match=r"logit_offset needs one number a class \(4\)"):
        Checkpoint("tutorial", {}, ["a", "b", "c", "d"], 16, loaded.normalization, {}, logit_offset=[1.0])


def test_imbalanced_data_is_countered_by_default_and_one_setting_turns_it_off():
    from cnnkit.runs.imbalance import AUTO_LOGIT_ADJUSTMENT, imbalance_plan

    fast = get_recipe("fast")
    recipe, line = imbalance_plan(fast, 100.0, has_validation=True)
    assert recipe.logit_adjustment == AUTO_LOGIT_ADJUSTMENT
    assert line.startswith("Countering it: training uses the logit-adjusted loss (logit_adjustment=0.5); ")
    assert "as far as validation says" in line and line.endswith(
        "(--set imbalance_handling=none turns this off)."
    )
    assert imbalance_plan(fast, 3.0, True) == (fast, None)  # not imbalanced
    assert imbalance_plan(fast.replace(imbalance_handling="none"), 100.0, True)[1] is None
    own = fast.replace(sampler="balanced")  # the user's own setting is kept; only the decision is adjusted
    recipe, line = imbalance_plan(own, None, True)  # None: a class has no training image
    assert recipe == own and "logit-adjusted loss" not in line and "validation" in line
    recipe, line = imbalance_plan(fast, 10.0, True, user_set=["logit_adjustment"])  # --set logit_adjustment=0
    assert recipe == fast and "logit-adjusted loss" not in line
    recipe, line = imbalance_plan(fast, 10.0, has_validation=False)
    assert recipe.logit_adjustment == 0.5 and "validation" not in line


def test_no_adjustment_is_chosen_on_a_class_of_a_few_validation_images():
    labels = torch.tensor([0] * 6 + [1, 1, 1, 2, 2, 2, 2, 2])
    logits = torch.nn.functional.one_hot(labels, 3).float()
    logits[6, 0] = 1.5  # one rare image answered wrong: a shift towards the rare classes "helps"
    choice = SINGLE_LABEL.choose_logit_adjustment(logits, labels, [100, 5, 5])
    assert choice["best_gain"] > 0  # a tau does score higher on these 14 images
    assert choice["tau"] == 0 and choice["offset"] is None  # but class 1 has 3 of them: noise
    assert choice["fewest_images"] == 3 and choice["after"] == choice["before"]
    more = torch.cat([labels, torch.tensor([1, 1])])  # five images of class 1: chosen
    logits = torch.cat([logits, torch.nn.functional.one_hot(torch.tensor([1, 1]), 3).float()])
    assert SINGLE_LABEL.choose_logit_adjustment(logits, more, [100, 5, 5])["tau"] > 0


def test_a_checkpoint_with_an_unknown_task_or_a_misshapen_offset_is_one_line_naming_the_file(tmp_path):
    from cnnkit.api import Classifier
    from cnnkit.checkpoint import load_checkpoint

    path = tmp_path / "model.pt"
    Classifier("tutorial", num_classes=3, image_size=16, device="cpu").save(path)
    contents = torch.load(path, weights_only=True)
    for key, value, message in (
        ("task", "multi", "Received: task='multi'"),
        ("logit_offset", [1.0], "Received: 1"),
    ):
        torch.save({**contents, key: value}, tmp_path / "bad.pt")
        with pytest.raises(
            ValueError, match=f"^{re.escape(str(tmp_path / 'bad.pt'))}: .*{re.escape(message)}"
        ):
            load_checkpoint(tmp_path / "bad.pt")
    assert load_checkpoint(path).task == "single_label"  # the good file is untouched
