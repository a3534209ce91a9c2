"""Photo folders: the training size chosen from the files, the stem whose cost follows the input,
random-resized crops, micro-batches, and starting from trained weights (--init, --pretrained)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cnnkit.api import Classifier
from cnnkit.checkpoint import load_checkpoint
from cnnkit.cli import main
from cnnkit.data.decode import decode_image
from cnnkit.data.survey import SizeSurvey, choose_image_size, survey_image_sizes
from cnnkit.engine.augment import RandomCrops
from cnnkit.engine.job import TrainingData, TrainingJob, fit
from cnnkit.engine.planning import plan_steps
from cnnkit.engine.trainer import Trainer
from cnnkit.models import create_model
from cnnkit.models.airbench import stem_stride_for
from cnnkit.recipes import get_recipe
from cnnkit.runs.initialization import apply_initial_weights, initial_weights
from cnnkit.runtime.normalization import Normalization, center_crop_images
from tests.conftest import CLASS_NAMES, make_quadrant_images


def write_photos(root, sizes: list[tuple[int, int]], split: str = "train", seed: int = 0) -> None:
    """Quadrant images upscaled to ``sizes`` (cycled over the four classes), as JPEG and PNG."""
    images, labels = make_quadrant_images(len(sizes), size=16, seed=seed)
    for index, (image, label, size) in enumerate(zip(images, labels, sizes, strict=True)):
        folder = root / split / CLASS_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        photo = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)
        photo.save(folder / f"IMG_{index:04d}.{'jpg' if index % 3 else 'png'}", quality=95)


def test_the_training_size_follows_the_median_shorter_side():
    def survey(median: int, uniform=None) -> SizeSurvey:
        return SizeSurvey(10, 20, median, 900, uniform)

    assert choose_image_size(survey(375)) == 160  # photos: capped at 160 px
    assert choose_image_size(survey(90)) == 96  # rounded to a multiple of 16
    assert choose_image_size(survey(20)) == 32  # at least 32 px
    assert choose_image_size(survey(200, uniform=(200, 200))) == 200  # one square size: kept


def test_a_mixed_size_photo_folder_trains_with_no_flags_and_evaluate_agrees(tmp_path, capsys):
    rng = np.random.default_rng(0)
    sizes = [(int(w), int(h)) for w, h in rng.integers(40, 90, size=(60, 2))]
    write_photos(tmp_path / "photos", sizes)
    write_photos(tmp_path / "photos", sizes[:20], split="val", seed=1)
    survey = survey_image_sizes(tmp_path / "photos")
    assert survey.count == 60 and survey.uniform is None
    arguments = ["--epochs", "1", "--set", "min_steps=0", "--out", str(tmp_path / "runs"), "--device", "cpu"]
    assert main(["train", "--data", str(tmp_path / "photos"), *arguments]) == 0
    err = capsys.readouterr().err
    size = choose_image_size(survey)
    assert f"Images vary in size ({survey.shortest}-{survey.longest} px on their shorter side" in err
    assert f"training at {size} px (--img-size to change)" in err and "the photo recipe" in err
    checkpoint = load_checkpoint(tmp_path / "runs" / "train" / "best.pt")
    assert checkpoint.image_size == size and checkpoint.resize_size == round(size / 0.87)
    assert checkpoint.recipe.name == "photo" and checkpoint.model_arguments["stem_stride"] == stem_stride_for(
        size
    )
    report = json.loads((tmp_path / "runs" / "train" / "report.json").read_text())
    assert main(["evaluate", str(tmp_path / "runs" / "train" / "best.pt"), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    # evaluate decodes as the run stored its images and scores the same centre crops.
    assert evaluated["split"] == report["evaluation"]["split"] == "validation"
    assert evaluated["accuracy"] == pytest.approx(report["evaluation"]["accuracy"])


def test_another_model_on_photos_gets_an_adam_recipe_without_the_fast_networks_arguments(tmp_path, capsys):
    # The photo recipe's Muon steps and stem_stride are the fast network's (a ResNet-18 diverged
    # with them): --model resnet18 alone gets the Adam photo recipe, and an argument the user
    # sets for the chosen model is still checked.
    write_photos(tmp_path / "photos", [(48, 48)] * 16)
    arguments = ["--data", str(tmp_path / "photos"), "--model", "resnet18", "--epochs", "0.5"]
    arguments += ["--set", "min_steps=0", "--out", str(tmp_path / "runs"), "--device", "cpu", "--quiet"]
    assert main(["train", *arguments]) == 0
    checkpoint = load_checkpoint(tmp_path / "runs" / "train" / "best.pt")
    assert checkpoint.model_name == "resnet18" and "stem_stride" not in checkpoint.model_arguments
    assert checkpoint.recipe.name == "photo-adam" and checkpoint.recipe.optimizer == "adam"
    assert main(["train", *arguments, "--set", "model_arguments.stem_stride=2"]) != 0
    assert "Unknown argument of model 'resnet18'. Received: stem_stride=2" in capsys.readouterr().err


def test_prediction_decodes_exactly_as_training_stored_and_cropped():
    buffer = io.BytesIO()
    Image.fromarray(make_quadrant_images(1, size=16)[0][0]).resize((97, 61)).save(buffer, "PNG")
    data = buffer.getvalue()
    stored = torch.from_numpy(np.array(decode_image(data, 46, "x.png")))[None]
    cropped = decode_image(data, 40, "x.png", resize_size=46)
    assert cropped.shape == (40, 40, 3)
    np.testing.assert_array_equal(center_crop_images(stored, 40)[0].numpy(), cropped)


@pytest.mark.parametrize(("size", "limit"), [(64, 1.5), (128, 3.0), (224, 6.0)])
def test_the_patchify_stem_keeps_the_cost_near_the_32_px_one(size, limit):
    def multiply_adds(network, side: int) -> int:
        total = 0

        def count(module, _inputs, output):
            nonlocal total
            if isinstance(module, torch.nn.Conv2d):
                total += output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]

        hooks = [module.register_forward_hook(count) for module in network.modules()]
        network.eval()
        with torch.no_grad():
            network(torch.zeros(1, 3, side, side))
        for hook in hooks:
            hook.remove()
        return total

    base = multiply_adds(create_model("fast", image_size=32), 32)
    today = multiply_adds(create_model("fast", image_size=size, stem_stride=1), size)
    patchify = create_model("fast", image_size=size)  # the default stem adapts to the size
    assert create_model("fast").model_arguments["stem_stride"] == 1  # CIFAR's 32 px: airbench's own
    assert today / base > 3  # the full-resolution stem: ~4x at 64 px, ~16x at 128
    assert multiply_adds(patchify, size) / base <= limit
    parameters = sum(parameter.numel() for parameter in patchify.parameters())
    assert parameters < 1.02 * sum(parameter.numel() for parameter in create_model("fast").parameters())
    assert patchify.model_arguments["stem_stride"] == stem_stride_for(size) > 1  # stored resolved


def test_a_checkpoint_from_before_the_adaptive_stem_loads_with_its_full_resolution_stem(tmp_path):
    # Checkpoints written before the stem's default became "auto" hold no stem_stride; at 64 px
    # their network had the full-resolution stem, and must be rebuilt with it.
    from cnnkit.checkpoint import Checkpoint, save_checkpoint

    network = create_model("fast", num_classes=2, image_size=64, stem_stride=1)
    legacy = Checkpoint(
        "fast", {"num_classes": 2, "image_size": 64}, ["a", "b"], 64, Normalization(), network.state_dict()
    )
    save_checkpoint(tmp_path / "old.pt", legacy)
    assert load_checkpoint(tmp_path / "old.pt").model_arguments["stem_stride"] == 1
    classifier = Classifier.load(tmp_path / "old.pt", device="cpu")
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    network.eval()
    inputs = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        expected = network(inputs).argmax(1)
    assert classifier.predict(images).argmax(1).tolist() == expected.tolist()


def test_random_crops_take_their_scale_and_aspect_and_the_centre_crop_is_exact():
    crops = RandomCrops((0.35, 1.0), (3 / 4, 4 / 3), 24)
    boxes = crops.draw(4000, torch.Generator().manual_seed(0))
    area, aspect = boxes[:, 0] * boxes[:, 1], boxes[:, 0] / boxes[:, 1]
    assert area.min() >= 0.35 - 1e-6 and area.max() <= 1 + 1e-6
    assert aspect.min() >= 3 / 4 - 1e-3 and aspect.max() <= 4 / 3 + 1e-3
    inside = (boxes[:, 2] - boxes[:, 0] / 2 >= -1e-6) & (boxes[:, 2] + boxes[:, 0] / 2 <= 1 + 1e-6)
    assert bool(inside.all())
    images = torch.arange(2 * 3 * 48 * 48, dtype=torch.float32).view(2, 3, 48, 48)
    centre = RandomCrops((1.0, 1.0), (1.0, 1.0), 24)(images, torch.tensor([[0.5, 0.5, 0.5, 0.5]] * 2))
    torch.testing.assert_close(centre, images[:, :, 12:36, 12:36])  # the pixels themselves, not a blend


def test_small_data_gets_its_minimum_steps():
    recipe = get_recipe("photo")
    plan = plan_steps(240, recipe)  # batch 24: 10 steps an epoch
    assert (plan.batch_size, plan.steps_per_epoch, plan.total_steps, plan.epochs) == (24, 10, 200, 20)
    assert plan_steps(50_000, recipe).total_steps == 25 * 8  # a large set keeps its 8 epochs


def test_micro_batches_add_up_to_the_full_batch_and_are_announced(capsys):
    from cnnkit.engine.console import ConsoleLogger

    images, labels = make_quadrant_images(128, size=16, seed=3)
    data = TrainingData(torch.from_numpy(images), torch.from_numpy(labels))
    recipe = get_recipe("tutorial").replace(epochs=1, batch_size=64)  # no BatchNorm: sums agree
    weights = []
    for budget in (4.0, 0.5135):  # the second leaves room for ~25 images a micro-batch
        torch.manual_seed(0)  # the same initial weights
        model = create_model("tutorial", num_classes=4, image_size=16)
        job = TrainingJob(
            model,
            data,
            recipe.replace(memory_budget_gb=budget),
            Normalization(),
            torch.device("cpu"),
            callbacks=[ConsoleLogger()],
        )
        trainer = Trainer(job)
        trainer.fit()
        weights.append(model.state_dict())
        if budget < 1:
            assert 1 < trainer.micro_batch_size < 64
    assert "micro-batches of" in capsys.readouterr().out
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=1e-4, atol=1e-5)


def train_source(tmp_path, classes: list[str]):
    """A 32-px fast network trained briefly on quadrant images named ``classes``."""
    images, labels = make_quadrant_images(80, size=32, seed=4)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = tmp_path / "source" / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index}.png")
    arguments = [
        "--recipe",
        "fast",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "runs"),
        "--name",
        "source",
        "--quiet",
    ]
    assert main(["train", "--data", str(tmp_path / "source"), *arguments]) == 0
    return tmp_path / "runs" / "source" / "best.pt"


def test_init_keeps_the_trunk_replaces_the_head_and_freezing_trains_the_head_alone(tmp_path, capsys):
    source = train_source(tmp_path, ["w", "x", "y", "z"])
    trained = load_checkpoint(source)
    images, labels = make_quadrant_images(48, size=32, seed=5)
    arguments = {
        key: value
        for key, value in trained.model_arguments.items()
        if key not in ("num_classes", "image_size")
    }
    new = Classifier("fast", class_names=["a", "b", "c", "d"], image_size=32, device="cpu", **arguments)

    start = initial_weights(source, None, "fast", progress=False)
    assert "a new head for 4 classes" in apply_initial_weights(new, start)
    state = new.network.state_dict()
    assert torch.equal(state["whiten.weight"], trained.state_dict["whiten.weight"])
    assert not torch.equal(state["head.weight"], trained.state_dict["head.weight"])
    assert new.normalization == trained.normalization  # the trunk's own input scaling
    before = {name: tensor.clone() for name, tensor in state.items()}
    recipe = get_recipe("finetune").replace(
        model="fast", epochs=1, freeze_epochs=1, min_steps=0, eval_crop=1.0
    )
    data = TrainingData(torch.from_numpy(images), torch.from_numpy(labels))
    fit(
        TrainingJob(
            new.network, data, recipe, new.normalization, torch.device("cpu"), initialize_from_data=False
        )
    )
    after = new.network.state_dict()
    moved = [name for name in after if not torch.equal(after[name], before[name])]
    assert "head.weight" in moved
    frozen_weights = [name for name in moved if not name.startswith("head") and "running" not in name]
    assert [name for name in frozen_weights if not name.endswith("num_batches_tracked")] == []


def test_init_and_freeze_epochs_work_end_to_end(tmp_path, capsys):
    source = train_source(tmp_path, CLASS_NAMES)
    images, labels = make_quadrant_images(60, size=16, seed=6)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = tmp_path / "target" / CLASS_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((50, 40)).save(folder / f"{index}.jpg")
    arguments = ["--init", str(source), "--freeze-epochs", "1", "--epochs", "2", "--set", "min_steps=0"]
    assert (
        main(["train", "--data", str(tmp_path / "target"), *arguments, "--out", str(tmp_path / "runs")]) == 0
    )
    err = capsys.readouterr().err
    assert "the finetune recipe" in err and "Training at 32 px, the size" in err
    assert f"Starting from {source}: trunk and head." in err  # the same class names: the head is kept
    config = yaml.safe_load((tmp_path / "runs" / "train" / "config.yaml").read_text())
    assert config["init"] == str(source) and config["recipe"]["freeze_epochs"] == 1
    assert (
        main(["train", "--data", str(tmp_path / "target"), "--init", str(source), "--model", "tutorial"]) == 1
    )
    assert "holds a fast network. Received: --model tutorial" in capsys.readouterr().err


def test_a_resnet_trains_from_a_torchvision_layout_file(tmp_path, capsys):
    weights = create_model("resnet18", num_classes=1000).state_dict()
    torch.save(weights, tmp_path / "resnet18-local.pth")
    images, labels = make_quadrant_images(24, size=32, seed=7)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = tmp_path / "data" / CLASS_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index}.png")
    arguments = [
        "--model",
        "resnet18",
        "--pretrained",
        str(tmp_path / "resnet18-local.pth"),
        "--img-size",
        "32",
    ]
    arguments += ["--epochs", "1", "--set", "min_steps=0", "--out", str(tmp_path / "runs"), "--device", "cpu"]
    assert main(["train", "--data", str(tmp_path / "data"), *arguments]) == 0
    checkpoint = load_checkpoint(tmp_path / "runs" / "train" / "last.pt")
    assert checkpoint.model_name == "resnet18" and checkpoint.normalization.mean == (0.485, 0.456, 0.406)
    (tmp_path / "cut.pth").write_bytes((tmp_path / "resnet18-local.pth").read_bytes()[:1000])
    arguments[3] = str(tmp_path / "cut.pth")
    assert main(["train", "--data", str(tmp_path / "data"), *arguments]) == 1
    assert "cut.pth" in capsys.readouterr().err.splitlines()[-1]
