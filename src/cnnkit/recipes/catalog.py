"""The named recipes. Every default cnnkit trains with lives here."""

from __future__ import annotations

import difflib

from cnnkit.recipes.recipe import Recipe

_TUTORIAL = Recipe(name="tutorial", model="tutorial", epochs=5, batch_size=32, learning_rate=1e-3)

# airbench94's recipe (Keller Jordan, 2024), as published, on the fast network.
_AIRBENCH94 = Recipe(
    name="airbench94",
    model="fast",
    epochs=9.9,
    batch_size=1024,
    optimizer="sgd",
    learning_rate=11.5,
    momentum=0.85,
    weight_decay=0.0153,
    bias_lr_scale=64.0,
    lr_schedule="triangle",
    lr_start=0.2,
    lr_peak=0.23,
    lr_end=0.07,
    label_smoothing=0.2,
    loss_reduction="sum",
    drop_last=True,
    flip="alternating",
    translate=2,
    lookahead=True,
    first_layer_bias_epochs=3,
    tta=2,
    normalization="standardize",
    model_arguments={"logit_scale": 1 / 9, "unit_head": False},
)

# airbench94's Muon variant (2024): 8 epochs at batch 2000 reach what airbench94 reaches in 9.9,
# with Muon on the filters, SGD on biases and head, a linear decay and no lookahead. It keeps
# airbench94's lr_start / lr_peak / lr_end, inert under the linear schedule (see TRIANGLE_FIELDS).
_AIRBENCH94_MUON = _AIRBENCH94.replace(
    name="airbench94-muon",
    epochs=8,
    batch_size=2000,
    optimizer="muon",
    learning_rate=0.67,  # the head's; biases get 0.053
    bias_lr_scale=0.053 / 0.67,
    momentum=0.85,
    muon_learning_rate=0.24,
    muon_momentum=0.6,
    weight_decay=2e-6,  # per example
    lr_schedule="linear",
    lookahead=False,
    model_arguments={},  # the fast network's defaults are this variant's head
)

# Photos (images larger than 32 px): the fast recipe (its network has a patchify stem above
# 48 px: stem_stride="auto", the default) trained on random-resized crops of images stored 1.15x
# the input size (Inception's scale 0.35-1 and aspect 3/4-4/3, evaluated on the centre crop),
# mirror test-time augmentation, and at least the 200 steps the recipe takes on CIFAR-10's 50,000
# images however few the photos (a few hundred at batch 24 would be 80 steps in 8 epochs).
_PHOTO = _AIRBENCH94_MUON.replace(
    name="photo",
    translate=0,
    crop_scale=(0.35, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    eval_crop=0.87,
    tta=1,
    min_steps=200,
)

# Fine-tuning a trained network (--init, --pretrained), as fastai's fine_tune: Adam, the new head
# alone for one epoch, then everything at half the rate, decaying linearly; photo augmentation.
_FINETUNE = Recipe(
    name="finetune",
    model="fast",
    epochs=8,
    batch_size=64,
    learning_rate=1e-3,
    lr_schedule="linear",
    label_smoothing=0.1,
    flip="random",
    crop_scale=(0.35, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    eval_crop=0.87,
    tta=1,
    min_steps=300,
    freeze_epochs=1,
    fine_tune_lr_scale=0.5,
    normalization="standardize",
)

# A network of another family (a ResNet from scratch: `--model resnet18`): the photo crops with
# Adam and a linear decay, nothing frozen. Muon's step sizes (the photo recipe's lr 0.67) suit the
# fast network's filters; a ResNet-18 trained with them diverged at 128 px (lent H200) and stayed
# at chance at 64 px (validation 0.250 against photo-adam's 0.713, AMD CPU, docs/benchmarks.md).
_PHOTO_ADAM = _FINETUNE.replace(name="photo-adam", epochs=16, freeze_epochs=0)

_RECIPES: dict[str, Recipe] = {
    # The reference tutorial, exactly: Adam (Keras defaults), batch 32, 5 epochs, 20% validation.
    "tutorial": _TUTORIAL,
    "airbench94": _AIRBENCH94,
    "airbench94-muon": _AIRBENCH94_MUON,
    # The default: on this 2-core CPU the Muon variant measured 90.45% (TTA, seed 0, 40k/10k split)
    # in 257 s against airbench94's 89.71% in 355 s (docs/benchmarks.md).
    "fast": _AIRBENCH94_MUON.replace(name="fast"),
    # The longer preset: the Muon recipe at airbench95's widths (128/384/384), 20 epochs. On this
    # CPU (40k/10k split): 12 epochs 91.17% in 849 s (seed 0); 20 epochs 91.53 +- 0.21% over
    # seeds 0-2 in 1,470 s, about 31 min on all 50,000 images against a 40 min budget. Wider
    # (128/384/512), residual groups and a two-member ensemble measured no better for their
    # time (docs/benchmarks.md).
    "best": _AIRBENCH94_MUON.replace(
        name="best",
        epochs=20,
        model_arguments={"widths": [128, 384, 384]},
    ),
    "photo": _PHOTO,
    "finetune": _FINETUNE,
    "photo-adam": _PHOTO_ADAM,
}

# What `cnnkit train` and `cnnkit.train` use when no recipe is named. (`Classifier.fit`, the
# Keras tutorial's method, defaults to "tutorial": see its docstring.)
DEFAULT_RECIPE = "fast"
# ... unless the images are larger than 32 px (photos), or training starts from trained weights.
PHOTO_RECIPE = "photo"
# A network outside the fast family named without a recipe (`--model resnet18`) gets the recipe
# made for it, else Adam with the photo crops (Muon's step sizes are the fast network's).
MODEL_RECIPES = {"tutorial": "tutorial", "tutorial-extra-conv": "tutorial"}
OTHER_MODEL_RECIPE = "photo-adam"
FINE_TUNE_RECIPE = "finetune"


def list_recipes() -> list[str]:
    return sorted(_RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe registered as ``name``."""
    if name not in _RECIPES:
        close = difflib.get_close_matches(name, _RECIPES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown recipe. Received: recipe={name!r}. Available: {', '.join(list_recipes())}, "
            f"or a .yaml recipe file.{hint}"
        )
    return _RECIPES[name]
