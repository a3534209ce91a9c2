"""The fast (airbench-style) recipe's parts, each checked for what it is meant to do."""

import math

import pytest
import torch
from torch import nn

from cnnkit.api import Classifier
from cnnkit.engine.augment import Augmenter, cutout, translate
from cnnkit.engine.lookahead import Lookahead
from cnnkit.engine.optimization import build_optimizer, lr_multiplier
from cnnkit.models import create_model
from cnnkit.recipes import get_recipe
from cnnkit.runtime.pixel_classifier import tta_logits
from tests.conftest import CLASS_NAMES


def smooth_images(count=64, size=16, seed=0):
    """Images with strongly correlated neighbouring pixels and channels, like photos."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(count, 1, size // 4, size // 4, generator=generator)
    images = nn.functional.interpolate(base, size=size, mode="bilinear").repeat(1, 3, 1, 1)
    return images + 0.1 * torch.randn(count, 3, size, size, generator=generator)


def test_whitening_from_chunks_and_slices_equals_whitening_from_the_whole_sample(monkeypatch):
    # A large sample (5,000 photos at 128 px) is whitened a chunk and a slice at a time so its
    # float64 patches are never held whole: the filters must be the whole sample's.
    import cnnkit.models.airbench as airbench
    from cnnkit.runtime.normalization import InputChunks

    images = smooth_images(count=60, size=16)
    pixels = (images.clamp(-2, 2) * 60 + 128).round().to(torch.uint8).permute(0, 2, 3, 1)
    monkeypatch.setattr(airbench, "WHITENING_SLICE_BYTES", 8 * 12 * 15 * 15 * 7)  # 7 images a slice
    chunks = InputChunks(pixels, nn.Identity(), chunk_bytes=4 * 16 * 16 * 3 * 25)  # 25 a chunk
    assert [len(chunk) for chunk in chunks] == [25, 25, 10]
    as_chunks = [chunk.permute(0, 3, 1, 2).float() for chunk in chunks]
    sliced, reference = create_model("fast", image_size=16), create_model("fast", image_size=16)
    sliced.initialize_from_data(as_chunks)
    monkeypatch.setattr(airbench, "WHITENING_SLICE_BYTES", 2**40)
    reference.initialize_from_data(torch.cat(as_chunks))
    torch.testing.assert_close(sliced.whiten.weight, reference.whiten.weight, rtol=1e-4, atol=1e-5)


def test_whitening_layer_decorrelates_training_patches():
    model = create_model("fast", image_size=16)
    images = smooth_images()
    model.initialize_from_data(images)
    with torch.no_grad():
        outputs = nn.functional.conv2d(images, model.whiten.weight[:12])  # the 12 eigen-filters
    flat = outputs.permute(1, 0, 2, 3).reshape(12, -1)
    covariance = torch.cov(flat)
    off_diagonal = covariance - torch.diag(torch.diag(covariance))
    assert off_diagonal.abs().max() < 0.02
    assert torch.allclose(torch.diag(covariance), torch.ones(12), atol=0.05)
    before = torch.cov(images.unfold(2, 2, 1).unfold(3, 2, 1).permute(1, 4, 5, 0, 2, 3).reshape(12, -1))
    assert (before - torch.diag(torch.diag(before))).abs().max() > 0.5  # the input really was correlated
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])


def test_alternating_flip_flips_each_image_in_exactly_the_right_epochs():
    augmenter = Augmenter(1000, "alternating", 0, torch.Generator().manual_seed(0))
    first = augmenter.flips_for_epoch(0)
    assert 400 < first.sum() < 600  # a fair coin per image in epoch 0
    for epoch in range(1, 6):
        expected = ~first if epoch % 2 else first
        assert torch.equal(augmenter.flips_for_epoch(epoch), expected)


def test_augmenter_mirrors_exactly_the_chosen_images():
    augmenter = Augmenter(4, "alternating", 0, torch.Generator().manual_seed(0))
    inputs = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).view(4, 3, 2, 2)
    flips = torch.tensor([True, False, True, False])
    output = augmenter(inputs, flips)
    assert torch.equal(output[flips], inputs[flips].flip(-1))
    assert torch.equal(output[~flips], inputs[~flips])


def test_translate_shifts_with_reflection():
    image = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    assert torch.equal(translate(image, torch.tensor([[0, 0]]), 2), image)
    shifted = translate(image, torch.tensor([[1, 0]]), 2)  # content moves up one row
    assert torch.equal(shifted[0, 0, :3], image[0, 0, 1:])
    assert torch.equal(shifted[0, 0, 3], image[0, 0, 2])  # reflected edge


def test_cutout_zeroes_one_whole_square_inside_each_image():
    inputs = torch.ones(200, 3, 10, 10)
    corners = torch.rand(200, 2, generator=torch.Generator().manual_seed(0))
    output = cutout(inputs, corners, 4)
    zeroed = output == 0
    assert torch.equal(zeroed[:, 0], zeroed[:, 2])  # the same square in every channel
    for mask in zeroed[:, 0]:
        rows, columns = mask.nonzero().unbind(1)
        assert mask.sum() == 16 and rows.max() - rows.min() == 3 and columns.max() - columns.min() == 3
    tops = {int(m.nonzero()[0, 0]) for m in zeroed[:, 0]}
    assert tops == set(range(7))  # every position where the square fits whole, edges included
    with pytest.raises(ValueError, match="cutout=11"):
        cutout(inputs, corners, 11)


def test_augmenter_applies_cutout_after_its_other_transforms():
    augmenter = Augmenter(8, "alternating", 1, torch.Generator().manual_seed(0), cutout=3)
    draw = augmenter.draw(8)
    assert draw.shifts.shape == (8, 2) and draw.cutout_corners.shape == (8, 2)
    inputs = torch.rand(8, 3, 8, 8) + 1  # no zeros of its own
    output = augmenter(inputs, torch.zeros(8, dtype=torch.bool), draw)
    assert ((output == 0).sum(dim=(1, 2, 3)) == 27).all()  # 3x3 squares, 3 channels
    assert Augmenter(8, "none", 0, torch.Generator()).draw(8).cutout_corners is None


def test_residual_groups_add_a_skip_around_their_last_two_convs():
    model = create_model("fast", image_size=16, widths=(8, 16, 16), residual=True)
    group = model.groups[0]
    plain = create_model("fast", image_size=16, widths=(8, 16, 16))
    assert len(list(model.parameters())) == len(list(plain.parameters())) + 3 * 3  # conv3, norm3 a group
    with torch.no_grad():
        group.conv2.weight.zero_()
        group.conv3.weight.zero_()
    inputs = torch.randn(4, 24, 16, 16)
    expected = nn.functional.gelu(group.norm1(group.pool(group.conv1(inputs))))
    assert torch.allclose(group(inputs), expected, atol=1e-5)  # zero branch: the skip alone


class CallCounter(nn.Module):
    """Returns one-hot logits naming the call, and records each call's inputs."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, views):
        self.inputs.append(views.clone())
        logits = torch.zeros(len(views), 6)
        logits[:, len(self.inputs) - 1] = 1
        return logits


def test_tta_averages_the_intended_views_with_the_intended_weights():
    images = torch.randn(2, 3, 5, 5)
    model = CallCounter()
    logits = tta_logits(model, images, level=2)
    assert torch.allclose(logits[0], torch.tensor([0.25, 0.25, 0.125, 0.125, 0.125, 0.125]))
    padded = nn.functional.pad(images, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[:, :, :5, :5], padded[:, :, 2:, 2:]
    expected = [images, images.flip(-1), up_left, up_left.flip(-1), down_right, down_right.flip(-1)]
    for seen, view in zip(model.inputs, expected, strict=True):
        assert torch.equal(seen, view)
    assert torch.equal(tta_logits(CallCounter(), images, level=1)[0], torch.tensor([0.5, 0.5, 0, 0, 0, 0]))


def test_decoupled_sgd_sets_pytorch_lr_and_weight_decay():
    recipe = get_recipe("airbench94")
    model = create_model("fast")
    optimizer = build_optimizer(model, recipe, torch.device("cpu"))
    norm_group, other_group = optimizer.param_groups
    learning_rate = 11.5 / (1024 * (1 + 1 / (1 - 0.85)))
    assert other_group["lr"] == pytest.approx(learning_rate)
    assert norm_group["lr"] == pytest.approx(64 * learning_rate)
    # The decay actually applied per step (lr x weight_decay) is the same for both groups.
    decay = 0.0153 * 1024 / (1024 * (1 + 1 / 0.15))
    assert other_group["lr"] * other_group["weight_decay"] == pytest.approx(decay)
    assert norm_group["lr"] * norm_group["weight_decay"] == pytest.approx(decay)
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.85
    trainable = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(model.whiten.weight) not in trainable  # frozen whitening filters
    assert all(id(m.weight) not in trainable for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_triangle_schedule_rises_then_falls():
    recipe = get_recipe("airbench94")
    total = 1000
    assert lr_multiplier(0, total, recipe) == pytest.approx(0.2)
    assert lr_multiplier(230, total, recipe) == pytest.approx(1.0)
    assert lr_multiplier(total, total, recipe) == pytest.approx(0.07)
    assert lr_multiplier(115, total, recipe) == pytest.approx(0.6)


def test_lookahead_moves_weights_to_their_average():
    model = nn.Linear(2, 1)
    lookahead = Lookahead(model)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    lookahead.update(model, decay=0.75)  # a quarter of the way from the average to the new weights
    assert torch.allclose(model.weight, start + 0.25)
    with torch.no_grad():
        model.weight.add_(10.0)
    lookahead.update(model, decay=1.0)  # decay 1 restores the average
    assert torch.allclose(model.weight, start + 0.25)


def test_fast_network_adapts_to_image_size_and_classes():
    model = create_model("fast", num_classes=3, image_size=64, widths=(16, 32, 32))
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
    with pytest.raises(ValueError, match="image_size=8"):
        create_model("fast", image_size=8)


COLORS = torch.tensor([[230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40]], dtype=torch.uint8)


def make_color_images(count, size=16, seed=0):
    """A coloured square at a random place: the colour is the class. The fast network pools
    globally (it is translation-invariant by design), so the task is what to learn, not where."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 100, (count, size, size, 3), dtype=torch.uint8, generator=generator)
    labels = torch.arange(count) % len(COLORS)
    corners = torch.randint(0, size - 6, (count, 2), generator=generator)
    for index, (top, left) in enumerate(corners.tolist()):
        images[index, top : top + 6, left : left + 6] = COLORS[labels[index]]
    return images, labels


def test_a_short_fast_recipe_run_really_learns():
    images, labels = make_color_images(512, seed=3)
    classifier = Classifier("fast", class_names=CLASS_NAMES, image_size=16, device="cpu", widths=(16, 32, 32))
    history = classifier.fit(
        images, labels, recipe="fast", batch_size=64, epochs=4, validation_split=0.25, verbose=False
    )
    assert history.history["val_accuracy"][-1] >= 0.9
    assert classifier.tta == 2
    test_images, test_labels = make_color_images(80, seed=4)
    assert classifier.evaluate(test_images, test_labels)["accuracy"] >= 0.9
    assert math.isfinite(history.history["loss"][-1])


def test_muon_orthogonalizes_updates_and_keeps_weight_norms():
    from cnnkit.engine.muon import Muon, orthogonalize

    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(64, 288, generator=generator) * torch.logspace(-3, 1, 288)  # badly conditioned
    singular_values = torch.linalg.svdvals(orthogonalize(matrix).float())
    assert singular_values.min() > 0.3 and singular_values.max() < 1.6  # all directions ~ the same size
    weight = nn.Parameter(torch.randn(8, 4, 3, 3, generator=generator))
    weight.grad = torch.randn(8, 4, 3, 3, generator=generator)
    Muon([weight], lr=0.1).step()
    # Normalised to norm sqrt(rows) before the step, which then moves it by ~lr per direction.
    assert weight.norm().item() == pytest.approx(8**0.5, rel=0.1)


def test_muon_recipe_sends_filters_to_muon_and_the_rest_to_sgd():
    from cnnkit.engine.muon import Muon

    recipe = get_recipe("fast")
    model = create_model("fast", **recipe.model_arguments)
    optimizer = build_optimizer(model, recipe, torch.device("cpu"))
    sgd, muon = optimizer.optimizers
    assert isinstance(muon, Muon) and all(p.ndim == 4 for p in muon.param_groups[0]["params"])
    biases, head = sgd.param_groups
    assert all(p.ndim == 1 for p in biases["params"]) and head["params"] == [model.head.weight]
    assert biases["lr"] == pytest.approx(0.053) and head["lr"] == pytest.approx(0.67)
    assert model.logit_scale == pytest.approx(1 / 256)


def test_little_data_with_the_default_batch_size_trains_without_blowing_up():
    images, labels = make_color_images(320, seed=5)  # 64 training images a class
    classifier = Classifier("fast", class_names=CLASS_NAMES, image_size=16, device="cpu", widths=(16, 32, 32))
    history = classifier.fit(
        images, labels, recipe="fast", batch_size=2000, epochs=6, validation_split=0.2, verbose=False
    )
    assert history.history["val_accuracy"][-1] >= 0.9


def test_small_data_gets_at_least_ten_steps_an_epoch_with_a_summed_loss():
    from cnnkit.engine.job import TrainingData, TrainingJob
    from cnnkit.engine.trainer import Trainer
    from cnnkit.runtime.normalization import Normalization

    images, labels = make_color_images(400)
    data = TrainingData(images, labels)

    def trainer(recipe):
        model = create_model(recipe.model, num_classes=4, image_size=16, **recipe.model_arguments)
        return Trainer(TrainingJob(model, data, recipe, Normalization(), torch.device("cpu")))

    fast = trainer(get_recipe("fast"))  # batch 2000, summed loss
    assert fast.batch_size == 40 and fast.steps_per_epoch == 10
    head_group = fast.optimizer.optimizers[0].param_groups[1]
    # Weight decay applied per step follows the batch actually used: 2e-6 per example x 40.
    assert head_group["lr"] * head_group["weight_decay"] == pytest.approx(2e-6 * 40)
    tutorial = trainer(get_recipe("tutorial"))  # mean loss: the batch the recipe asks for
    assert tutorial.batch_size == 32 and tutorial.steps_per_epoch == 13
    with pytest.raises(ValueError, match=r"image size \(16 px\). Received: cutout=17"):
        trainer(get_recipe("fast").replace(cutout=17))


def test_a_plain_fast_classifier_has_the_head_the_default_recipe_was_tuned_for():
    classifier = Classifier("fast", class_names=CLASS_NAMES)
    recipe_model = create_model("fast", num_classes=4, **get_recipe("fast").model_arguments)
    assert classifier.network.logit_scale == recipe_model.logit_scale == pytest.approx(1 / 256)
    airbench94 = create_model("fast", **get_recipe("airbench94").model_arguments)
    assert airbench94.logit_scale == pytest.approx(1 / 9)
