"""The fast ensemble: members that train as if alone and predict together."""

import torch
import torch.nn.functional as F

from cnnkit.api import Classifier
from cnnkit.models import create_model
from cnnkit.recipes import get_recipe
from cnnkit.tasks import SINGLE_LABEL
from tests.conftest import CLASS_NAMES
from tests.test_fast_recipe import make_color_images


def small_ensemble(members=2):
    return create_model("fast-ensemble", num_classes=4, image_size=16, members=members, widths=(8, 16, 16))


def test_members_start_apart_and_eval_averages_their_logits():
    ensemble = small_ensemble(3)
    first, second = ensemble.members[:2]
    # Each member has its own draw of the random filters (the rest start as the identity).
    assert not torch.equal(first.groups[1].conv1.weight, second.groups[1].conv1.weight)
    assert not torch.equal(first.head.weight, second.head.weight)
    images = torch.randn(5, 3, 16, 16)
    assert ensemble(images).shape == (3, 5, 4)  # training mode: every member's logits
    ensemble.eval()
    expected = torch.stack([member(images) for member in ensemble.members]).mean(0)
    assert torch.allclose(ensemble(images), expected)


def test_each_member_gets_exactly_the_gradient_it_would_get_alone():
    ensemble = small_ensemble(2)
    recipe = get_recipe("fast")
    inputs = torch.randn(8, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 4, (8,))
    report, objective = SINGLE_LABEL.loss(
        ensemble(inputs), targets, recipe.label_smoothing, recipe.loss_reduction
    )
    objective.backward()
    member = ensemble.members[1]
    together = member.head.weight.grad.clone()
    member.zero_grad()
    alone = F.cross_entropy(member(inputs), targets, label_smoothing=recipe.label_smoothing, reduction="sum")
    alone.backward()
    assert torch.allclose(member.head.weight.grad, together, atol=1e-6)
    assert torch.isclose(report, objective / 2)  # the report is the members' mean loss


def test_an_ensemble_trains_saves_and_predicts_from_its_checkpoint(tmp_path):
    images, labels = make_color_images(400, seed=7)
    classifier = Classifier(
        "fast-ensemble", class_names=CLASS_NAMES, image_size=16, device="cpu", members=2, widths=(16, 32, 32)
    )
    history = classifier.fit(
        images, labels, recipe="fast", batch_size=64, epochs=3, validation_split=0.25, verbose=False
    )
    assert history.history["val_accuracy"][-1] >= 0.9
    classifier.save(tmp_path / "ensemble.pt")
    loaded = Classifier.load(tmp_path / "ensemble.pt", device="cpu")
    test_images, test_labels = make_color_images(40, seed=8)
    assert len(loaded.network.members) == 2
    assert (loaded.predict(test_images) == classifier.predict(test_images)).all()
    assert loaded.evaluate(test_images, test_labels)["accuracy"] >= 0.9
