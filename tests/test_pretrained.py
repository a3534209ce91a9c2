"""ResNets in torchvision's state-dict layout, and their pretrained weights served by a local server.

The weights are made here in that layout (never downloaded from the internet) and published
under a name carrying their own SHA-256 prefix, as PyTorch publishes its files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import socket

import pytest
import torch
from torch import nn

from cnnkit.checkpoint import load_weights
from cnnkit.data import PRETRAINED_WEIGHTS, DataError, pretrained_weights_file, read_state_dict
from cnnkit.data.errors import DownloadError
from cnnkit.data.pretrained import pretrained_weights_url
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


# ---------------------------------------------------------------------------------------------
# The weights: a local server stands in for download.pytorch.org.


@pytest.fixture(scope="module")
def resnet18_weights() -> bytes:
    """A resnet18 state dict in torchvision's layout, as the bytes of a .pth file."""
    buffer = io.BytesIO()
    torch.save(create_model("resnet18", num_classes=1000).state_dict(), buffer)
    return buffer.getvalue()


@pytest.fixture
def published(server, resnet18_weights, monkeypatch) -> str:
    """Publish ``resnet18_weights`` as PyTorch would, point cnnkit at it; return the file name."""
    prefix = hashlib.sha256(resnet18_weights).hexdigest()[:8]
    file_name = f"resnet18-{prefix}.pth"
    server.routes[f"/models/{file_name}"] = resnet18_weights
    entry = dataclasses.replace(PRETRAINED_WEIGHTS["resnet18"], file_name=file_name, sha256_prefix=prefix)
    monkeypatch.setitem(PRETRAINED_WEIGHTS, "resnet18", entry)
    monkeypatch.setenv("CNNKIT_PRETRAINED_URL", f"{server.url}/models/")
    return file_name


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_table_names_pytorchs_files_and_their_hash_prefixes(monkeypatch):
    monkeypatch.delenv("CNNKIT_PRETRAINED_URL", raising=False)
    assert pretrained_weights_url("resnet18") == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert pretrained_weights_url("resnet50") == "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
    for name, weights in PRETRAINED_WEIGHTS.items():
        assert weights.file_name == f"{name}-{weights.sha256_prefix}.pth"
        assert weights.mean == (0.485, 0.456, 0.406) and weights.std == (0.229, 0.224, 0.225)


def test_download_is_verified_cached_and_loads_into_the_model(server, published, isolated_cnnkit_home):
    path = pretrained_weights_file("resnet18", progress=False)
    assert path == isolated_cnnkit_home / "weights" / published
    assert pretrained_weights_file("resnet18", progress=False) == path
    assert server.requests == [f"/models/{published}"]  # fetched once, then the verified copy
    model = create_model("resnet18", num_classes=1000)
    state = read_state_dict(path)
    load_weights(model, state, path)
    assert torch.equal(model.layer2[0].downsample[0].weight, state["layer2.0.downsample.0.weight"])


def test_a_damaged_cached_copy_is_downloaded_again(server, published, isolated_cnnkit_home, capsys):
    cached = isolated_cnnkit_home / "weights" / published
    cached.parent.mkdir()
    cached.write_bytes(b"half a file")
    assert pretrained_weights_file("resnet18", progress=False) == cached
    assert len(server.requests) == 1 and hashlib.sha256(cached.read_bytes()).hexdigest().startswith(
        PRETRAINED_WEIGHTS["resnet18"].sha256_prefix
    )
    assert "downloading it again" in capsys.readouterr().err


def test_a_wrong_hash_is_refused_and_leaves_no_file(server, published, isolated_cnnkit_home, monkeypatch):
    server.routes[f"/models/{published}"] = b"someone else's bytes"
    with pytest.raises(DataError, match=r"Checksum mismatch.*SHA-256 digest starting with [0-9a-f]{8}"):
        pretrained_weights_file("resnet18", progress=False)
    assert list((isolated_cnnkit_home / "weights").iterdir()) == []


def test_offline_is_one_line_saying_how_to_pass_the_file(monkeypatch, isolated_cnnkit_home):
    base = f"http://127.0.0.1:{closed_port()}/models"
    monkeypatch.setenv("CNNKIT_PRETRAINED_URL", base)
    with pytest.raises(DownloadError) as caught:
        pretrained_weights_file("resnet50", progress=False)
    message = str(caught.value)
    assert message.startswith(f"Could not download the resnet50 weights from {base}/resnet50-11ad3fa6.pth (")
    assert message.endswith(
        "Offline? Download that file elsewhere and pass it: --pretrained path/to/resnet50-11ad3fa6.pth"
    )
    assert "\n" not in message
    assert not (isolated_cnnkit_home / "weights" / "resnet50-11ad3fa6.pth").exists()


def test_a_local_file_is_used_as_given(server, tmp_path, isolated_cnnkit_home):
    own = tmp_path / "my-resnet18.pth"
    torch.save({"model": {"fc.bias": torch.zeros(3)}}, own)  # not the published bytes: not hashed
    assert pretrained_weights_file("resnet18", source=own) == own
    assert server.requests == [] and not (isolated_cnnkit_home / "weights").exists()
    assert list(read_state_dict(own)) == ["fc.bias"]  # unwrapped from {"model": ...}
    with pytest.raises(DataError, match=r"^Pretrained weights file not found: .*missing\.pth$"):
        pretrained_weights_file("resnet18", source=tmp_path / "missing.pth")
    with pytest.raises(DataError, match=r"is not a file"):
        pretrained_weights_file("resnet18", source=tmp_path)


def test_unknown_names_list_the_available_ones():
    expected = r"No pretrained weights for 'vgg16'\. Available: resnet18, resnet50\.$"
    with pytest.raises(ValueError, match=expected):
        pretrained_weights_file("vgg16")


@pytest.mark.parametrize(
    ("contents", "reason"),
    [
        (lambda weights: weights[: len(weights) // 2], "the file is truncated or damaged"),
        (lambda weights: b"<html>Not Found</html>", "it is not a PyTorch weights file"),
        (lambda weights: b"", "the file is empty"),
    ],
)
def test_an_unreadable_weights_file_is_one_clear_line(tmp_path, resnet18_weights, contents, reason):
    path = tmp_path / "resnet18-f37072fd.pth"
    path.write_bytes(contents(resnet18_weights))
    with pytest.raises(DataError) as caught:
        read_state_dict(path)
    message = str(caught.value)
    assert message.startswith(f"Cannot read {path} as PyTorch weights: {reason}") and "\n" not in message


def test_a_file_without_tensors_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"epoch": 3, "fc.bias": torch.zeros(2)}, path)
    with pytest.raises(DataError, match=r"is not a state dict: its entry 'epoch' is a int, not a tensor"):
        read_state_dict(path)
    torch.save([torch.zeros(2)], path)
    with pytest.raises(DataError, match=r"holds no state dict"):
        read_state_dict(path)


def test_read_state_dict_accepts_a_path_string(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {"conv1.weight": torch.ones(1)}}, path)
    assert isinstance(read_state_dict(str(path))["conv1.weight"], torch.Tensor)
