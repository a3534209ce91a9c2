"""One class an image: integer labels, softmax, cross-entropy, the most probable class wins."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from cnnkit.tasks.common import counts_imbalanced, listed_weights, with_monitored

# The strengths of post-hoc logit adjustment tried on the validation split (0: the plain logits):
# up to 2 towards the rare classes, and down to -1, back towards the prior, for a model whose
# training already over-corrected (a logit-adjusted loss whose tau was too strong).
ADJUSTMENT_GRID = tuple(round(0.05 * step, 2) for step in range(-20, 41))  # -1, -0.95, ..., 2
# Validation images every class present needs before a post-hoc adjustment is chosen on them.
MINIMUM_VALIDATION_IMAGES = 5

if TYPE_CHECKING:
    import torch

    from cnnkit.recipes import Recipe


class SingleLabelTask:
    """The single-label task: each image has one class of ``class_names``."""

    name = "single_label"
    multi_label = False
    default_monitor = "val_accuracy"
    output_activation = "softmax"

    # -- labels ---------------------------------------------------------------------------------
    @staticmethod
    def class_counts(labels: Any, num_classes: int) -> np.ndarray:
        """Images a class, from integer labels (a tensor or an array)."""
        values = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels, dtype=np.int64).ravel()
        return np.bincount(values, minlength=num_classes)

    def is_imbalanced(self, labels: Any, num_classes: int) -> bool:
        """The largest class has over ``IMBALANCE_RATIO`` times the smallest's images (or a class
        has none), as ``data.balance`` says when loading."""
        return counts_imbalanced(self.class_counts(labels, num_classes))

    @staticmethod
    def monitor_for(monitor: str) -> str:
        """The column a run monitors: ``monitor`` as given."""
        return monitor

    def metric_names(self, imbalanced: bool, monitor: str | None = None) -> tuple[str, ...]:
        """What epoch lines and reports show: loss and accuracy; with imbalanced classes, balanced
        accuracy and macro-F1 too; and whatever ``monitor`` follows."""
        extra = ["balanced_accuracy", "macro_f1"] if imbalanced else []
        return with_monitored(["loss", "accuracy", *extra], monitor)

    # -- training -------------------------------------------------------------------------------
    def class_balance(
        self, labels: torch.Tensor, num_classes: int, recipe: Recipe, device: torch.device
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The recipe's (class weights, logit shift) for training ``labels``; None where off.

        Weights ``n / (classes * count)`` (scikit-learn's "balanced"), or the recipe's own list (one a
        class, in class order);
        the shift ``logit_adjustment * log(count / n)`` (Menon et al., ICLR 2021). A class without
        training images gets weight 0 and the shift of one image, so that nothing is infinite.
        """
        import torch

        counts = torch.as_tensor(self.class_counts(labels, num_classes), dtype=torch.float64)
        total = counts.sum()
        weights = shift = None
        if recipe.class_weights == "balanced":
            weights = torch.where(counts > 0, total / (num_classes * counts.clamp_min(1)), 0.0)
            weights = weights.float().to(device)
        elif isinstance(recipe.class_weights, tuple):
            weights = listed_weights(recipe.class_weights, num_classes, "class", device)
        if recipe.logit_adjustment:
            shift = (recipe.logit_adjustment * torch.log(counts.clamp_min(1) / total)).float().to(device)
        return weights, shift

    def sampling_weights(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Each image's chance of being drawn by the class-balanced sampler: every class equally."""
        import torch

        counts = torch.as_tensor(self.class_counts(labels, num_classes), dtype=torch.float64)
        return (1.0 / counts.clamp_min(1))[labels.long().cpu()]

    @staticmethod
    def loss(
        logits: torch.Tensor,
        targets: torch.Tensor,
        label_smoothing: float,
        reduction: str,
        class_weights: torch.Tensor | None = None,
        logit_shift: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to report, the loss to minimise): cross-entropy.

        ``class_weights``: one weight a class; ``logit_shift``: added to the logits before the
        loss (the logit adjustment). An ensemble's ``(members, N, classes)`` logits: each member
        learns from its own loss, so the objective is their sum (every member's gradient is its
        own); the report, their mean.
        """
        import torch
        import torch.nn.functional as F

        losses = torch.stack(
            [
                F.cross_entropy(
                    member_logits.float() + (0 if logit_shift is None else logit_shift),
                    targets,
                    weight=class_weights,
                    label_smoothing=label_smoothing,
                    reduction=reduction,
                )
                for member_logits in (logits if logits.ndim == 3 else logits[None])
            ]
        )
        return losses.mean(), losses.sum()

    @staticmethod
    def evaluation_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The summed loss evaluation reports: plain cross-entropy (no smoothing, no weights)."""
        import torch.nn.functional as F

        return F.cross_entropy(logits.float(), labels.long(), reduction="sum")

    # -- the decision on imbalanced classes -------------------------------------------------------
    def choose_logit_adjustment(
        self, logits: torch.Tensor, labels: torch.Tensor, class_counts: Any
    ) -> dict[str, Any]:
        """Post-hoc logit adjustment (Menon et al., ICLR 2021, section 4): the ``tau`` in
        ``ADJUSTMENT_GRID`` whose shifted logits ``logits - tau * log(prior)`` score the highest
        balanced accuracy on these (validation) ``logits``; the one nearest 0 on ties. None is taken
        when a class present has fewer than ``MINIMUM_VALIDATION_IMAGES`` images here: its recall,
        and so the choice, would be noise. (Requiring the gain to pass one standard error instead
        refused gains that held on the test set: CIFAR-10-LT, docs/benchmarks.md.)
        ``class_counts``: the training images a class, whose shares are the prior.

        Returns ``{"tau", "offset" (the per-class shift, None for tau 0), "before", "after",
        "noise" (one standard error of ``before``), "best_gain", "fewest_images"}``.
        """
        import torch

        from cnnkit.engine.metrics import score_logits

        counts = torch.as_tensor(np.asarray(class_counts, dtype=np.float64))
        log_prior = torch.log(counts.clamp_min(1) / counts.sum()).float()

        def balanced(tau: float) -> float:
            shifted = logits.float() - tau * log_prior
            return score_logits(shifted, labels, ("balanced_accuracy",))["balanced_accuracy"]

        scores = {tau: balanced(tau) for tau in ADJUSTMENT_GRID}
        tau = max(ADJUSTMENT_GRID, key=lambda value: (scores[value], -abs(value)))
        noise, best_gain = _balanced_accuracy_noise(logits, labels), scores[tau] - scores[0.0]
        fewest = min((count for count in np.bincount(labels.long().cpu().numpy()) if count), default=0)
        if fewest < MINIMUM_VALIDATION_IMAGES:
            tau = 0.0
        offset = None if tau == 0 else [round(float(value), 6) for value in -tau * log_prior]
        return {
            "tau": tau,
            "offset": offset,
            "before": scores[0.0],
            "after": scores[tau],
            "noise": noise,
            "best_gain": best_gain,  # of the best tau tried, taken or not
            "fewest_images": int(fewest),  # of a class present
        }

    # -- prediction -----------------------------------------------------------------------------
    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        """The output activation: softmax over classes (traced into the service and ONNX graphs)."""
        import torch

        return torch.softmax(logits, dim=1)

    @staticmethod
    def decide(probabilities: np.ndarray) -> np.ndarray:
        """The predicted class index of each row: the most probable."""
        return np.asarray(probabilities).argmax(axis=1)

    @staticmethod
    def uncertain(probabilities: np.ndarray, min_confidence: float | None) -> list[bool | None]:
        """Each image's doubt: its top probability below ``min_confidence`` (None: no minimum, so
        None for each)."""
        if min_confidence is None:
            return [None] * len(probabilities)
        return (np.asarray(probabilities).max(1) < min_confidence).tolist()

    def decided_names(
        self, probabilities: np.ndarray, class_names: list[str], thresholds: Any = None
    ) -> list[str]:
        """Each image's most probable class name; thresholds are for multi-label models."""
        if thresholds is not None:
            raise ValueError(f"threshold is for multi-label models. Received: threshold={thresholds!r}")
        return [class_names[index] for index in self.decide(probabilities)]

    @staticmethod
    def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most probable classes of each row, best first: (indices, probabilities)."""
        probabilities = np.asarray(probabilities)
        k = min(k, probabilities.shape[1])
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(probabilities, order, axis=1)


def _balanced_accuracy_noise(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """One standard error of the balanced accuracy of ``logits``: the mean of the present classes'
    recalls, each a binomial share of its images (Laplace-smoothed, so that a class all right or
    all wrong on three images still counts as uncertain)."""
    labels = labels.long().cpu().numpy()
    predicted = logits.argmax(1).cpu().numpy()
    variances = []
    for label in np.unique(labels):
        mine = labels == label
        images = int(mine.sum())
        recall = (int((predicted[mine] == label).sum()) + 1) / (images + 2)
        variances.append(recall * (1 - recall) / images)
    return float(np.sqrt(np.sum(variances)) / len(variances))
