"""Grad-CAM explanations (issue 22): every registered model names its feature layer, the maps are
right, the network is left as it was, they point at the object that decided, and overlays draw."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.models import create_model, list_models
from cnnkit.models.ensemble import Ensemble
from cnnkit.reports.overlays import heatmap_overlay, save_overlay
from cnnkit.runtime.explanation import explain_pixels, feature_layers, grad_cam
from cnnkit.runtime.normalization import Normalization

SIZE = 32


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_names_a_feature_layer_that_grad_cam_explains(name):
    model = create_model(name, num_classes=3, image_size=SIZE).eval()
    layers = feature_layers(model)
    assert layers and all(isinstance(layer, torch.nn.Module) for layer in layers)
    assert all(any(isinstance(m, torch.nn.Conv2d) for m in layer.modules()) for layer in layers)
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    maps = grad_cam(model, images)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == torch.float32
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1
    # Each map is scaled to a peak of 1, or all zero where nothing speaks for the class.
    assert all(float(peak) in (0.0, 1.0) for peak in maps.amax((1, 2)))


def test_an_ensemble_names_every_members_layer_and_explains_by_their_mean():
    assert len(feature_layers(create_model("fast-ensemble", num_classes=3, members=3))) == 3
    member = create_model("fast", num_classes=3, image_size=SIZE).eval()
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    alone = grad_cam(member, images)
    twins = Ensemble([member, copy.deepcopy(member)]).eval()
    torch.testing.assert_close(grad_cam(twins, images), alone)
    # A member whose head is zero adds nothing to the logits, hence nothing to the map, wherever
    # it stands: the map is the members' together, not the first member's.
    silent = copy.deepcopy(member)
    torch.nn.init.zeros_(silent.head.weight)
    for members in ([silent, member], [member, silent]):
        torch.testing.assert_close(grad_cam(Ensemble(members).eval(), images), alone)


def test_the_map_is_relu_of_gradient_weighted_feature_maps_upsampled():
    model = create_model("tutorial", num_classes=3, image_size=16).eval()
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    features = model.conv2(torch.relu(model.pool1(model.conv1(images)))).detach().requires_grad_(True)
    logits = model.dense2(torch.relu(model.dense1(torch.relu(model.pool2(features)).flatten(1))))
    logits[:, 1].sum().backward()
    weights = features.grad.mean((2, 3), keepdim=True)
    expected = torch.relu((weights * features.detach()).sum(1, keepdim=True))
    expected = torch.nn.functional.interpolate(expected, size=(16, 16), mode="bilinear")[:, 0]
    expected = expected / expected.amax((1, 2), keepdim=True)
    torch.testing.assert_close(grad_cam(model, images, class_indices=1), expected)
    # The default class is each image's largest logit; another class gives another map.
    predicted = model(images).argmax(1)
    torch.testing.assert_close(grad_cam(model, images), grad_cam(model, images, predicted))
    assert not torch.allclose(grad_cam(model, images, 0), grad_cam(model, images, 2))


def test_grad_cam_works_under_no_grad_inference_mode_and_channels_last_in_batches():
    model = create_model("fast", num_classes=3, image_size=SIZE).eval()
    images = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    plain = grad_cam(model, images)
    with torch.no_grad():
        torch.testing.assert_close(grad_cam(model, images), plain)
    with torch.inference_mode():
        torch.testing.assert_close(grad_cam(model, images.clone()), plain)
    model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(grad_cam(model, images.contiguous(memory_format=torch.channels_last)), plain)
    # One image at a time gives the same maps as the batch: images do not mix.
    torch.testing.assert_close(torch.cat([grad_cam(model, image[None]) for image in images]), plain)


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(module._forward_hooks) + len(module._backward_hooks) for module in model.modules())


def test_the_network_is_left_as_it_was_also_when_grad_cam_raises():
    model = create_model("resnet18", num_classes=3, image_size=SIZE)
    model.train()
    model.layer1.eval()  # a mixed state (a frozen, eval-mode part) is put back exactly
    for parameter in model.layer2.parameters():
        parameter.requires_grad_(False)
    modes = [module.training for module in model.modules()]
    needs_grad = [parameter.requires_grad for parameter in model.parameters()]
    images = torch.randn(2, 3, SIZE, SIZE)
    for class_indices in (None, [0, 2]):
        grad_cam(model, images, class_indices)
        assert [module.training for module in model.modules()] == modes
        assert [parameter.requires_grad for parameter in model.parameters()] == needs_grad
        assert all(parameter.grad is None for parameter in model.parameters())
        assert _hook_count(model) == 0
    with pytest.raises(
        ValueError, match=r"class_indices must lie in \[0, 3\)\. Received: class_indices=\[0, 7\]"
    ):
        grad_cam(model, images, [0, 7])
    assert [module.training for module in model.modules()] == modes
    assert _hook_count(model) == 0
    with pytest.raises(ValueError, match="one integer an image"):
        grad_cam(model, images, [0, 1, 2])
    assert _hook_count(model) == 0 and [module.training for module in model.modules()] == modes


def test_a_model_without_a_feature_layer_and_wrong_inputs_fail_in_one_line():
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    with pytest.raises(ValueError, match=r"names no feature layer.*Received: feature_layer_names=None"):
        grad_cam(plain, torch.randn(1, 3, 8, 8))
    plain.feature_layer_names = ("9",)
    with pytest.raises(ValueError, match="no feature layer named '9'"):
        feature_layers(plain)
    model = create_model("tutorial", num_classes=3, image_size=SIZE)
    with pytest.raises(ValueError, match="float images; explain_pixels takes uint8"):
        grad_cam(model, torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8))
    with pytest.raises(ValueError, match="must hold uint8 pixels"):
        explain_pixels(model, np.zeros((1, SIZE, SIZE, 3), np.float32), Normalization())


def test_explain_pixels_normalizes_and_batches_like_grad_cam():
    model = create_model("tutorial", num_classes=3, image_size=SIZE).eval()
    pixels = np.random.default_rng(4).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    normalization = Normalization(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    maps = explain_pixels(model, pixels, normalization, class_indices=[0, 1, 2, 0, 1], batch_size=2)
    assert maps.shape == (5, SIZE, SIZE) and maps.dtype == np.float32
    mean, std = torch.tensor(normalization.mean), torch.tensor(normalization.std)
    inputs = ((torch.as_tensor(pixels).float() / 255 - mean) / std).permute(0, 3, 1, 2)
    expected = grad_cam(model, inputs, torch.tensor([0, 1, 2, 0, 1])).numpy()
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    assert explain_pixels(model, pixels[:0], normalization).shape == (0, SIZE, SIZE)


COLOURS = np.array([[220, 40, 40], [40, 200, 40], [40, 40, 220]], dtype=np.uint8)


def _objects_in_quadrants(count: int, seed: int, side: int = 8) -> tuple[np.ndarray, ...]:
    """Grey 32-px images, each with one ``side`` square of its class's colour in a random quadrant."""
    generator = np.random.default_rng(seed)
    images = np.full((count, SIZE, SIZE, 3), 128, dtype=np.uint8)
    labels, quadrants = generator.integers(0, 3, count), generator.integers(0, 4, count)
    half = SIZE // 2
    for image, label, quadrant in zip(images, labels, quadrants, strict=True):
        top = (quadrant // 2) * half + generator.integers(0, half - side + 1)
        left = (quadrant % 2) * half + generator.integers(0, half - side + 1)
        image[top : top + side, left : left + side] = COLOURS[label]
    return images, labels, quadrants


def _peak_quadrants(maps: np.ndarray) -> np.ndarray:
    rows, columns = np.unravel_index(maps.reshape(len(maps), -1).argmax(1), maps.shape[1:])
    return (rows >= SIZE // 2) * 2 + (columns >= SIZE // 2)


def test_a_trained_models_heatmap_points_at_the_object_that_decided():
    from cnnkit import Classifier

    images, labels, _ = _objects_in_quadrants(600, seed=0)
    classifier = Classifier("tutorial", class_names=["red", "green", "blue"], image_size=SIZE)
    classifier.fit(images, labels, epochs=2, verbose=False)
    test_images, test_labels, test_quadrants = _objects_in_quadrants(200, seed=1)
    predicted = classifier.predict(test_images).argmax(1)
    assert (predicted == test_labels).mean() >= 0.9  # it learned the colours
    maps = explain_pixels(classifier.network, test_images, classifier.normalization)
    assert (_peak_quadrants(maps) == test_quadrants).mean() >= 0.8
    # A map is not just where the image differs from grey: the class decides which pixels glow.
    # Explaining a class the image does not show points elsewhere (measured: 17-25 % on target).
    other = (test_labels + 1) % 3
    wrong = explain_pixels(classifier.network, test_images, classifier.normalization, other)
    assert (_peak_quadrants(wrong) == test_quadrants).mean() < 0.6


def test_the_overlay_has_the_images_shape_and_hot_pixels_are_red(tmp_path):
    image = np.full((40, 60, 3), 128, dtype=np.uint8)
    heatmap = np.zeros((4, 6), dtype=np.float32)
    heatmap[0, 0] = 1.0  # hot in the top-left corner only (resized to the image)
    overlay = heatmap_overlay(image, heatmap)
    assert overlay.shape == (40, 60, 3) and overlay.dtype == np.uint8
    red, green, blue = (int(value) for value in overlay[0, 0])
    assert red > green + 40 and red > blue + 40
    red, green, blue = (int(value) for value in overlay[-1, -1])
    assert blue > red + 40  # cold is blue
    np.testing.assert_array_equal(heatmap_overlay(image, heatmap, alpha=0.0), image)
    with pytest.raises(ValueError, match=r"image must be uint8 \(H, W, 3\)\. Received: dtype=float32"):
        heatmap_overlay(image.astype(np.float32), heatmap)
    with pytest.raises(ValueError, match="alpha must be in"):
        heatmap_overlay(image, heatmap, alpha=2)
    written = save_overlay(tmp_path / "cat.png", image, heatmap)
    with Image.open(written) as saved:
        assert saved.size == (60, 40) and saved.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(saved), overlay)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cat.png"]  # no temporary left
    with Image.open(save_overlay(tmp_path / "cat.jpg", image, heatmap)) as saved:
        assert saved.format == "JPEG"
