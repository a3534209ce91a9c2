"""Any number of labels an image (issue 21): multi-hot targets, one sigmoid a label, binary
cross-entropy, a threshold a label.

Loading creates it for data with a ``labels.csv`` (``data.label_table``); the methods are those of
``SingleLabelTask``, so that the trainer, metrics and prediction take either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from cnnkit.tasks.common import counts_imbalanced, listed_weights, with_monitored

if TYPE_CHECKING:
    import torch

    from cnnkit.recipes import Recipe

DEFAULT_THRESHOLD = 0.5


class MultiLabelTask:
    """The multi-label task: each image has a set of ``class_names`` (labels), maybe empty."""

    name = "multi_label"
    multi_label = True
    default_monitor = "val_map"
    output_activation = "sigmoid"

    # -- labels ---------------------------------------------------------------------------------
    @staticmethod
    def class_counts(labels: Any, num_classes: int) -> np.ndarray:
        """Images a label, from multi-hot labels ``(N, labels)`` (a tensor or an array)."""
        values = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
        return (values.reshape(-1, num_classes) > 0.5).sum(0).astype(np.int64)

    def is_imbalanced(self, labels: Any, num_classes: int) -> bool:
        """The most frequent label has over ``IMBALANCE_RATIO`` times the images of the rarest."""
        return counts_imbalanced(self.class_counts(labels, num_classes))

    def monitor_for(self, monitor: str) -> str:
        """The column a run monitors: the recipes' default ``val_accuracy`` (a single-label metric)
        becomes mAP; any other name is kept (and refused by the metrics if not multi-label)."""
        return {"val_accuracy": self.default_monitor, "accuracy": "map"}.get(monitor, monitor)

    def metric_names(self, imbalanced: bool = True, monitor: str | None = None) -> tuple[str, ...]:
        """Loss, mAP, micro- and macro-F1 (at each label's threshold), and what ``monitor`` follows."""
        return with_monitored(["loss", "map", "micro_f1", "macro_f1"], monitor)

    # -- training -------------------------------------------------------------------------------
    def class_balance(
        self, labels: torch.Tensor, num_classes: int, recipe: Recipe, device: torch.device
    ) -> tuple[torch.Tensor | None, None]:
        """(positive weights, None): ``class_weights="balanced"`` weighs a label's positive images by
        its negatives over its positives (the usual ``pos_weight`` for rare labels); a list gives one
        weight a label. The logit adjustment and the balanced sampler are single-label settings."""
        import torch

        if recipe.logit_adjustment or recipe.sampler != "shuffle":
            setting = "logit_adjustment" if recipe.logit_adjustment else "sampler"
            raise ValueError(
                f"{setting} is a single-label setting; multi-label data takes class_weights "
                f"(positive weights for rare labels). Received: {setting}={getattr(recipe, setting)!r}"
            )
        if recipe.class_weights == "none":
            return None, None
        if isinstance(recipe.class_weights, tuple):
            return listed_weights(recipe.class_weights, num_classes, "label", device), None
        positives = torch.as_tensor(self.class_counts(labels, num_classes), dtype=torch.float64)
        negatives = len(labels) - positives
        weights = torch.where(positives > 0, negatives / positives.clamp_min(1), 1.0)
        return weights.float().to(device), None

    @staticmethod
    def loss(
        logits: torch.Tensor,
        targets: torch.Tensor,
        label_smoothing: float,
        reduction: str,
        class_weights: torch.Tensor | None = None,
        logit_shift: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to report, the loss to minimise): binary cross-entropy a label, averaged over an
        image's labels, then summed or averaged over images as ``reduction`` says (so that the
        reported figure is an image's mean, as evaluation's). ``class_weights``: positive weights a
        label; label smoothing pulls targets towards 0.5. An ensemble's members learn each from
        its own loss, as in the single-label task."""
        import torch
        import torch.nn.functional as F

        targets = targets.float()
        if label_smoothing:
            targets = targets * (1 - label_smoothing) + label_smoothing / 2
        losses = []
        for member_logits in logits if logits.ndim == 3 else logits[None]:
            elements = F.binary_cross_entropy_with_logits(
                member_logits.float(), targets, pos_weight=class_weights, reduction="none"
            )
            per_image = elements.mean(1)
            losses.append(per_image.sum() if reduction == "sum" else per_image.mean())
        stacked = torch.stack(losses)
        return stacked.mean(), stacked.sum()

    @staticmethod
    def evaluation_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed over images: each image's mean binary cross-entropy over its labels."""
        import torch.nn.functional as F

        elements = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
        return elements.mean(1).sum()

    # -- the decision ---------------------------------------------------------------------------
    @staticmethod
    def choose_thresholds(probabilities: np.ndarray, targets: np.ndarray) -> list[float]:
        """A threshold a label maximising that label's F1 on these (validation) images: predicted
        where the probability is at least it (halfway between the lowest score kept and the next).
        ``DEFAULT_THRESHOLD`` for a label with no positive."""
        probabilities, targets = np.asarray(probabilities, dtype=np.float64), np.asarray(targets) > 0.5
        thresholds = []
        for scores, actual in zip(probabilities.T, targets.T, strict=True):
            positives = int(actual.sum())
            if positives == 0:
                thresholds.append(DEFAULT_THRESHOLD)
                continue
            order = np.argsort(-scores, kind="stable")
            true_positives = np.cumsum(actual[order])
            predicted = np.arange(1, len(scores) + 1)
            f1 = 2 * true_positives / (predicted + positives)
            # Cut only between distinct scores: equal scores are decided together.
            distinct = np.append(scores[order][1:] != scores[order][:-1], True)
            best = int(np.argmax(np.where(distinct, f1, -1)))
            ranked = scores[order]
            # Halfway to the next lower score: the same decisions here, a margin for new images.
            below = ranked[best + 1] if best + 1 < len(ranked) else ranked[best]
            thresholds.append(float((ranked[best] + below) / 2))
        return thresholds

    # -- prediction -----------------------------------------------------------------------------
    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        """The output activation: one sigmoid a label."""
        import torch

        return torch.sigmoid(logits)

    @staticmethod
    def decide(probabilities: np.ndarray, thresholds: Any = None) -> np.ndarray:
        """Multi-hot decisions ``(N, labels)``: a label where its probability reaches its threshold
        (``DEFAULT_THRESHOLD`` without them)."""
        limits = DEFAULT_THRESHOLD if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        return np.asarray(probabilities) >= limits

    def label_sets(
        self, probabilities: np.ndarray, class_names: list[str], thresholds: Any = None
    ) -> list[list[tuple[str, float]]]:
        """Each image's labels at or above their thresholds, as (name, probability), most probable first."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        decided = self.decide(probabilities, thresholds)
        sets = []
        for row, chosen in zip(probabilities, decided, strict=True):
            indices = np.flatnonzero(chosen)
            indices = indices[np.argsort(-row[indices], kind="stable")]
            sets.append([(class_names[index], float(row[index])) for index in indices])
        return sets

    def decided_names(
        self, probabilities: np.ndarray, class_names: list[str], thresholds: Any = None
    ) -> list[list[str]]:
        """Each image's label names at or above their thresholds, most probable first."""
        sets = self.label_sets(probabilities, class_names, thresholds)
        return [[name for name, _ in labels] for labels in sets]

    @staticmethod
    def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most probable labels of each row, best first: (indices, probabilities)."""
        from cnnkit.tasks.single_label import SingleLabelTask

        return SingleLabelTask.top_k(probabilities, k)
