"""The default recipe learns images that are not photos: strokes on black, outlines on white, greyscale,
tiny images (issue 19). Each of these diverged or stayed at chance before."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cnnkit.checkpoint import _with_legacy_defaults, load_checkpoint
from cnnkit.cli import main
from cnnkit.models import create_model
from cnnkit.models.airbench import whitening_filters

SHAPES = ["horizontal", "vertical", "diagonal", "ring"]


def strokes(count: int, side: int = 32, ink: int = 255, paper: int = 0, seed: int = 0):
    """Thin strokes of four kinds at random places, greyscale: flat paper, one thin line of ink."""
    generator = np.random.default_rng(seed)
    labels = np.arange(count) % len(SHAPES)
    images = []
    for label in labels:
        canvas = Image.new("L", (side, side), paper)
        draw = ImageDraw.Draw(canvas)
        x, y = generator.uniform(side * 0.3, side * 0.7, size=2)
        half = generator.uniform(side * 0.15, side * 0.28)
        if SHAPES[label] == "horizontal":
            draw.line([x - half, y, x + half, y], fill=ink, width=1)
        elif SHAPES[label] == "vertical":
            draw.line([x, y - half, x, y + half], fill=ink, width=1)
        elif SHAPES[label] == "diagonal":
            draw.line([x - half, y - half, x + half, y + half], fill=ink, width=1)
        else:
            draw.ellipse([x - half, y - half, x + half, y + half], outline=ink, width=1)
        images.append(np.asarray(canvas))
    return np.stack(images), labels


def write_folder(root, images, labels):
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / SHAPES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:04d}.png")
    return root


def train_cli(data, out, *flags):
    return main(["train", "--data", str(data), "--out", str(out), "--name", "run", "--quiet", *flags])


@pytest.mark.parametrize(
    ("ink", "paper"), [(255, 0), (0, 255)], ids=["strokes-on-black", "outlines-on-white"]
)
def test_the_default_recipe_learns_thin_strokes_on_a_flat_background(tmp_path, ink, paper):
    # Before: NaN at step 3 (on black), or a validation loss of 1e15 at chance (on white).
    images, labels = strokes(400, ink=ink, paper=paper)
    data = write_folder(tmp_path / "data", images, labels)
    assert train_cli(data, tmp_path / "runs") == 0
    report = json.loads((tmp_path / "runs" / "run" / "report.json").read_text())
    assert report["learned"] is True
    assert report["evaluation"]["accuracy"] >= 0.8  # chance is 0.25
    assert report["evaluation"]["loss"] < 2
    checkpoint = load_checkpoint(tmp_path / "runs" / "run" / "best.pt")
    assert all(
        torch.isfinite(tensor).all()
        for tensor in checkpoint.state_dict.values()
        if tensor.is_floating_point()
    )


def test_greyscale_images_get_no_dead_whitening_filters():
    # Greyscale 2x2 patches span 4 of 12 directions: the 8 others once made constant channels.
    images = torch.from_numpy(strokes(200)[0]).float()[:, None].repeat(1, 3, 1, 1) / 255
    images = (images - images.mean()) / images.std()
    model = create_model("fast")
    model.initialize_from_data(images)
    with torch.no_grad():
        outputs = torch.nn.functional.conv2d(images, model.whiten.weight)
    deviations = outputs.transpose(0, 1).flatten(1).std(dim=1)
    assert deviations.min() > 0.1 * deviations.max()  # every channel carries signal


def test_the_whitening_floor_is_relative_to_the_largest_eigenvalue():
    # A covariance scaled by c gives the same layer up to 1/sqrt(c): the data's units do not matter.
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(12, 12, generator=generator, dtype=torch.float64))[0]
    covariance = basis @ torch.diag(torch.logspace(1, -5, 12, dtype=torch.float64)) @ basis.T
    small = whitening_filters(covariance, 12)
    large = whitening_filters(covariance * 1e6, 12)
    torch.testing.assert_close(large * 1e3, small)
    # The weakest directions are held to the floor rather than whitened up to unit variance.
    variances = torch.einsum("ki,ij,kj->k", small, covariance, small)
    assert variances[0] == pytest.approx(1, rel=1e-3) and variances[-1] < 0.05


def test_images_below_the_networks_minimum_are_upsampled_to_it(tmp_path, capsys):
    images, labels = strokes(160, side=8)
    data = write_folder(tmp_path / "data", images, labels)
    flags = ["--data", str(data), "--out", str(tmp_path / "runs"), "--name", "run", "--epochs", "1"]
    assert main(["train", *flags]) == 0
    assert (
        "Images of 8 px are smaller than the fast network takes: upsampled to 16 px"
        in capsys.readouterr().err
    )
    best = tmp_path / "runs" / "run" / "best.pt"
    assert load_checkpoint(best).image_size == 16
    capsys.readouterr()
    assert main(["predict", str(best), str(next((data / "ring").iterdir())), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["predictions"][0]["class"] in SHAPES


def test_checkpoints_from_before_keep_the_batchnorm_eps_they_were_trained_with():
    assert _with_legacy_defaults("fast", {"num_classes": 4})["batchnorm_eps"] == 1e-12
    assert _with_legacy_defaults("fast", {"batchnorm_eps": 1e-3})["batchnorm_eps"] == 1e-3
    model = create_model("fast", **_with_legacy_defaults("fast", {"num_classes": 4, "image_size": 32}))
    assert model.groups[0].norm1.eps == 1e-12
    new = create_model("fast", num_classes=4)
    assert new.groups[0].norm1.eps == 1e-3 and new.model_arguments["batchnorm_eps"] == 1e-3
    assert math.isclose(create_model("fast-ensemble", num_classes=4).members[0].groups[2].norm2.eps, 1e-3)
