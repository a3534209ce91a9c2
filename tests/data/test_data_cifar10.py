"""Reading the CIFAR-10 python format, and refusing doctored pickles."""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from data_fakes import (
    BATCH_NAMES,
    FAKE_CLASSES,
    IMAGES_PER_BATCH,
    fake_batch_files,
    python2_pickle,
    write_cifar_archive,
)

from cnnkit.data import CIFAR10_CLASSES, DataError, load_dataset
from cnnkit.data.cifar10 import read_cifar10_archive, read_cifar10_folder
from cnnkit.data.safe_pickle import load_restricted_pickle


def test_archive_pixels_labels_and_classes(fake_cifar):
    splits = load_dataset(fake_cifar.archive, progress=False)
    train, test = splits.train, splits.test
    assert splits.source == f"cifar10 ({fake_cifar.archive})"
    assert train.images.shape == (5 * IMAGES_PER_BATCH, 32, 32, 3)
    assert train.images.dtype == torch.uint8 and train.images.is_contiguous()
    assert test.images.shape == (IMAGES_PER_BATCH, 32, 32, 3)
    assert train.class_names == FAKE_CLASSES == test.class_names
    expected_labels = [label for name in BATCH_NAMES[:5] for label in fake_cifar.labels[name]]
    assert train.labels.tolist() == expected_labels
    assert test.labels.tolist() == fake_cifar.labels["test_batch"]
    # Rows are CHW: channel c, row y, column x sits at c * 1024 + y * 32 + x.
    row = fake_cifar.data["data_batch_2"][3]
    image = train.images[IMAGES_PER_BATCH + 3].numpy()
    for channel, y, x in [(0, 0, 0), (1, 5, 7), (2, 31, 30), (0, 31, 0)]:
        assert image[y, x, channel] == row[channel * 1024 + y * 32 + x]
    expected = row.reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(image, expected)


def test_folder_and_archive_agree(fake_cifar):
    from_archive = read_cifar10_archive(fake_cifar.archive)
    for source in (fake_cifar.folder, fake_cifar.folder.parent):  # the folder, or its parent
        splits = load_dataset(source, progress=False)
        assert splits.source == f"cifar10 ({fake_cifar.folder})"
        assert torch.equal(splits.train.images, from_archive[0].images)
        assert torch.equal(splits.train.labels, from_archive[0].labels)
        assert torch.equal(splits.test.images, from_archive[1].images)


def test_missing_meta_uses_official_names_and_missing_test_gives_none(tmp_path):
    files, _, _ = fake_batch_files()
    del files["batches.meta"], files["test_batch"]
    train, test = read_cifar10_archive(write_cifar_archive(tmp_path / "c.tar.gz", files))
    assert train.class_names == CIFAR10_CLASSES
    assert test is None


def test_missing_batch_is_named(tmp_path):
    files, _, _ = fake_batch_files()
    del files["data_batch_3"]
    with pytest.raises(DataError, match="lacks data_batch_3"):
        read_cifar10_archive(write_cifar_archive(tmp_path / "c.tar.gz", files))


def test_truncated_archive_is_a_data_error(fake_cifar, tmp_path):
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(fake_cifar.archive.read_bytes()[:5000])
    with pytest.raises(DataError, match="is not a readable CIFAR-10 archive"):
        load_dataset(truncated, progress=False)


def test_wrong_data_shape_is_named(tmp_path):
    files, _, _ = fake_batch_files()
    files["data_batch_1"] = python2_pickle({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]})
    with pytest.raises(DataError, match=r"data_batch_1 holds data of shape \(4, 100\)"):
        read_cifar10_archive(write_cifar_archive(tmp_path / "c.tar.gz", files))


def test_resize_cifar_to_image_size(fake_cifar):
    splits = load_dataset(fake_cifar.folder, image_size=40, progress=False)
    assert splits.train.images.shape == (100, 40, 40, 3)
    assert splits.test.images.shape == (20, 40, 40, 3)


class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code_in_archive(tmp_path):
    marker = tmp_path / "pwned"
    files, _, _ = fake_batch_files()
    files["data_batch_1"] = python2_pickle({b"data": _RunsCommand(marker), b"labels": []})
    archive = write_cifar_archive(tmp_path / "evil.tar.gz", files)
    with pytest.raises(DataError, match=r"refuses to load (posix|nt)\.system from .*data_batch_1"):
        load_dataset(archive, progress=False)
    assert not marker.exists()


def test_restricted_unpickler_refuses_modern_pickle_globals(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps([_RunsCommand(marker)], protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(DataError, match="CIFAR-10 batches hold only arrays"):
        load_restricted_pickle(data, "crafted")
    assert not marker.exists()


def test_garbage_batch_is_a_data_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    files, _, _ = fake_batch_files()
    for name, content in files.items():
        (folder / name).write_bytes(content)
    (folder / "data_batch_4").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_4 is not a readable CIFAR-10 batch"):
        read_cifar10_folder(folder)


def test_plain_tar_is_read_too(tmp_path):
    files, _, _ = fake_batch_files()
    path = tmp_path / "c.tar"
    with tarfile.open(path, "w") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    assert len(load_dataset(path, progress=False).train) == 100


def test_load_data_returns_keras_style_numpy_arrays(fake_cifar):
    import numpy as np

    import cnnkit

    (x_train, y_train), (x_test, y_test) = cnnkit.load_data(str(fake_cifar.archive))
    assert isinstance(x_train, np.ndarray) and x_train.dtype == np.uint8
    assert x_train.shape == (100, 32, 32, 3) and y_train.shape == (100,)
    assert x_test.shape == (20, 32, 32, 3) and y_test.shape == (20,)
