"""Fine-tuning's two phases (fastai's ``fine_tune``): the new head alone, then everything, slower."""

from __future__ import annotations

from torch import nn


class HeadFirst:
    """Trains only the model's head for ``freeze_epochs`` epochs, then every parameter the model
    trains, with the learning rate scaled by ``lr_scale`` from then on.

    The model's own frozen parameters (the fast network's whitening filters, its BatchNorm scales)
    stay frozen throughout. BatchNorm statistics keep adapting while the trunk is frozen, as
    fastai's default does: new data shifts them before the weights move.
    """

    def __init__(self, model: nn.Module, freeze_epochs: int, lr_scale: float) -> None:
        self.freeze_epochs = freeze_epochs
        self.scale = lr_scale
        self.head_name = getattr(model, "head_name", None)
        if freeze_epochs and self.head_name is None:
            name = getattr(model, "model_name", type(model).__name__)
            raise ValueError(
                f"freeze_epochs needs a model whose head cnnkit knows; {name} names none. "
                f"Received: freeze_epochs={freeze_epochs}"
            )
        self.trainable = {name: parameter.requires_grad for name, parameter in model.named_parameters()}

    def is_frozen(self, epoch: int) -> bool:
        return epoch <= self.freeze_epochs

    def apply(self, model: nn.Module, epoch: int) -> None:
        """Freeze or unfreeze the trunk for ``epoch`` (1-based); a no-op without freeze epochs."""
        if not self.freeze_epochs:
            return
        frozen = self.is_frozen(epoch)
        for name, parameter in model.named_parameters():
            in_head = name == self.head_name or name.startswith(self.head_name + ".")
            parameter.requires_grad_(self.trainable[name] and (in_head or not frozen))

    def lr_scale(self, epoch: int) -> float:
        return self.scale if self.freeze_epochs and epoch > self.freeze_epochs else 1.0
