"""Data audit: duplicate images and suspected label errors, as pure functions (NumPy and Pillow).

``find_duplicates`` groups exact duplicates (same decoded pixels) and near duplicates (perceptual
hashes within a few bits, checked by a finer hash) as within a class, across classes or across
splits;
``find_label_issues`` and ``find_outliers`` rank images by confident learning from
out-of-sample probabilities. Torch-free to import.
"""

from cnnkit.audit.duplicates import (
    ACROSS_CLASSES,
    ACROSS_SPLITS,
    DEFAULT_DETAIL_DISTANCE,
    DEFAULT_NEAR_DISTANCE,
    WITHIN_CLASS,
    DuplicateGroup,
    DuplicateMember,
    find_duplicates,
    group_duplicates,
)
from cnnkit.audit.hashing import (
    DETAIL_BITS,
    MAX_NEAR_DISTANCE,
    Fingerprints,
    connected_components,
    detail_distances,
    fingerprints,
    hamming_distances,
    near_pairs,
    perceptual_hashes,
    pixel_digests,
)
from cnnkit.audit.label_issues import (
    FILTERS,
    LabelIssue,
    LabelIssues,
    OutlierRanking,
    confident_joint,
    confident_thresholds,
    estimated_error_count,
    find_label_issues,
    find_outliers,
)

__all__ = [
    "ACROSS_CLASSES",
    "ACROSS_SPLITS",
    "DEFAULT_DETAIL_DISTANCE",
    "DEFAULT_NEAR_DISTANCE",
    "DETAIL_BITS",
    "FILTERS",
    "MAX_NEAR_DISTANCE",
    "WITHIN_CLASS",
    "DuplicateGroup",
    "DuplicateMember",
    "Fingerprints",
    "LabelIssue",
    "LabelIssues",
    "OutlierRanking",
    "confident_joint",
    "confident_thresholds",
    "connected_components",
    "detail_distances",
    "estimated_error_count",
    "find_duplicates",
    "find_label_issues",
    "find_outliers",
    "fingerprints",
    "group_duplicates",
    "hamming_distances",
    "near_pairs",
    "perceptual_hashes",
    "pixel_digests",
]
