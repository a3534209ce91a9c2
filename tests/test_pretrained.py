"""ResNets in torchvision's state-dict layout, counted and named from the architecture description."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnkit.models import create_model

# ---------------------------------------------------------------------------------------------
# The models: torchvision's layout, counted and named from the architecture description.


def expected_keys(block_kind: str, blocks_per_layer: tuple[int, ...]) -> list[str]:
    """torchvision's state_dict keys, in order, for a ResNet of basic or bottleneck blocks."""

    def batchnorm(prefix: str) -> list[str]:
        return [f"{prefix}.{name}" for name in ("weight", "bias", "running_mean", "running_var")] + [
            f"{prefix}.num_batches_tracked"
        ]

    convs = ("1", "2") if block_kind == "basic" else ("1", "2", "3")
    keys = ["conv1.weight", *batchnorm("bn1")]
    for layer, blocks in enumerate(blocks_per_layer, start=1):
        for block in range(blocks):
            prefix = f"layer{layer}.{block}"
            for conv in convs:
                keys += [f"{prefix}.conv{conv}.weight", *batchnorm(f"{prefix}.bn{conv}")]
            # Every layer's first block changes size or width, except basic blocks in layer1.
            if block == 0 and not (block_kind == "basic" and layer == 1):
                keys += [f"{prefix}.downsample.0.weight", *batchnorm(f"{prefix}.downsample.1")]
    return [*keys, "fc.weight", "fc.bias"]


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    return create_model("resnet50", num_classes=1000)


def test_resnet18_has_torchvisions_exact_layout():
    model = create_model("resnet18", num_classes=1000)
    state = model.state_dict()
    assert list(state) == expected_keys("basic", (2, 2, 2, 2))
    assert len(state) == 122
    assert sum(parameter.numel() for parameter in model.parameters()) == 11_689_512
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert state["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert state["fc.weight"].shape == (1000, 512) and state["fc.bias"].shape == (1000,)
    assert state["bn1.num_batches_tracked"].dtype == torch.int64


def test_resnet50_has_torchvisions_exact_layout(resnet50):
    state = resnet50.state_dict()
    assert list(state) == expected_keys("bottleneck", (3, 4, 6, 3))
    assert len(state) == 320
    assert sum(parameter.numel() for parameter in resnet50.parameters()) == 25_557_032
    assert state["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["layer3.5.bn3.running_var"].shape == (1024,)
    assert state["fc.weight"].shape == (1000, 2048)
    # v1.5: the stride sits on the 3x3 conv of a layer's first block, not on its first 1x1 conv.
    assert resnet50.layer2[0].conv1.stride == (1, 1) and resnet50.layer2[0].conv2.stride == (2, 2)
    assert resnet50.layer2[0].downsample[0].stride == (2, 2)


def test_forward_at_64_pixels_gives_one_logit_per_class(resnet50):
    resnet18 = create_model("resnet18", num_classes=7, image_size=64)
    for model, classes in ((resnet18, 7), (resnet50, 1000)):
        with torch.no_grad():
            logits = model.eval()(torch.randn(2, 3, 64, 64))
        assert logits.shape == (2, classes)
        assert model.head_name == "fc" and getattr(model, model.head_name) is model.fc


def test_initialisation_is_torchvisions():
    model = create_model("resnet18")
    # Kaiming normal, fan-out: std sqrt(2 / (64 * 7 * 7)) = 0.0253 for the stem conv.
    assert abs(model.conv1.weight.std().item() - (2 / (64 * 49)) ** 0.5) < 0.0025
    assert torch.all(model.layer3[1].bn2.weight == 1) and torch.all(model.layer3[1].bn2.bias == 0)


def test_small_images_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"image_size must be >= 32\. Received: image_size=16"):
        create_model("resnet18", image_size=16)
