"""Data layer: load image data sets into memory as uint8 tensors, with download and caching.

Also the pretrained weight files (``PRETRAINED_WEIGHTS``, ``pretrained_weights_file``,
``read_state_dict``): where they are published, verified download, reading.

Sources: the CIFAR-10 python archive (downloaded, or a local .tar.gz / extracted folder) and
image folders laid out as ``<class>/<image>`` (or a .zip of one). See ``load_dataset``; files of
a folder that are not usable images are skipped and listed in ``DataSplits.skipped``.

The names below load lazily: decoding (``decode_image``) needs no torch, and the torch-free ONNX
predictor imports it, so importing this package must not pull in the torch-based modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnnkit.data.cache import cnnkit_home
    from cnnkit.data.checks import check_trainable
    from cnnkit.data.cifar10 import CIFAR10_CLASSES
    from cnnkit.data.dataset import DataSplits, ImageData
    from cnnkit.data.decode import IMAGE_EXTENSIONS, decode_image
    from cnnkit.data.download import CIFAR10_MD5, CIFAR10_URL, download_cifar10
    from cnnkit.data.errors import DataError
    from cnnkit.data.folders import load_image_folder
    from cnnkit.data.pretrained import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        PRETRAINED_WEIGHTS,
        PretrainedWeights,
        pretrained_weights_file,
        read_state_dict,
    )
    from cnnkit.data.skipped import SkippedFile, skipped_summary, write_skipped_list
    from cnnkit.data.sources import load_dataset
    from cnnkit.data.split import classes_without_validation, split_train_val

_EXPORTS = {
    "CIFAR10_CLASSES": "cifar10",
    "CIFAR10_MD5": "download",
    "CIFAR10_URL": "download",
    "IMAGENET_MEAN": "pretrained",
    "IMAGENET_STD": "pretrained",
    "IMAGE_EXTENSIONS": "decode",
    "PRETRAINED_WEIGHTS": "pretrained",
    "PretrainedWeights": "pretrained",
    "DataError": "errors",
    "DataSplits": "dataset",
    "ImageData": "dataset",
    "SkippedFile": "skipped",
    "check_trainable": "checks",
    "classes_without_validation": "split",
    "cnnkit_home": "cache",
    "decode_image": "decode",
    "download_cifar10": "download",
    "load_dataset": "sources",
    "load_image_folder": "folders",
    "pretrained_weights_file": "pretrained",
    "read_state_dict": "pretrained",
    "skipped_summary": "skipped",
    "split_train_val": "split",
    "write_skipped_list": "skipped",
}

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "PRETRAINED_WEIGHTS",
    "DataError",
    "DataSplits",
    "ImageData",
    "PretrainedWeights",
    "SkippedFile",
    "check_trainable",
    "classes_without_validation",
    "cnnkit_home",
    "decode_image",
    "download_cifar10",
    "load_dataset",
    "load_image_folder",
    "pretrained_weights_file",
    "read_state_dict",
    "skipped_summary",
    "split_train_val",
    "write_skipped_list",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"cnnkit.data.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cnnkit.data' has no attribute {name!r}")
