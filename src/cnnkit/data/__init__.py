"""Data layer: load image data sets into memory as uint8 tensors, with download and caching.

Sources: the CIFAR-10 python archive (downloaded, or a local .tar.gz / extracted folder) and
image folders laid out as ``<class>/<image>`` (or a .zip of one). See ``load_dataset``; files of
a folder that are not usable images are skipped and listed in ``DataSplits.skipped``.
"""

from cnnkit.data.cache import cnnkit_home
from cnnkit.data.checks import check_trainable
from cnnkit.data.cifar10 import CIFAR10_CLASSES
from cnnkit.data.dataset import DataSplits, ImageData
from cnnkit.data.decode import IMAGE_EXTENSIONS, decode_image
from cnnkit.data.download import CIFAR10_MD5, CIFAR10_URL, download, download_cifar10
from cnnkit.data.errors import DataError
from cnnkit.data.folders import load_image_folder
from cnnkit.data.skipped import SkippedFile, skipped_summary, write_skipped_list
from cnnkit.data.sources import load_dataset
from cnnkit.data.split import split_train_val

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "IMAGE_EXTENSIONS",
    "DataError",
    "DataSplits",
    "ImageData",
    "SkippedFile",
    "check_trainable",
    "cnnkit_home",
    "decode_image",
    "download",
    "download_cifar10",
    "load_dataset",
    "load_image_folder",
    "skipped_summary",
    "split_train_val",
    "write_skipped_list",
]
