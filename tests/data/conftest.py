"""Fixtures for data-layer tests: an isolated cnnkit home and a fake CIFAR-10."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from data_fakes import FakeCifar, fake_batch_files, write_cifar_archive


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point CNNKIT_HOME at a fresh folder so tests never touch (or reuse) a real cache."""
    home = tmp_path / "cnnkit-home"
    monkeypatch.setenv("CNNKIT_HOME", str(home))
    monkeypatch.delenv("CNNKIT_CIFAR10_URL", raising=False)
    monkeypatch.delenv("CNNKIT_CIFAR10_MD5", raising=False)
    return home


@pytest.fixture
def fake_cifar(tmp_path: Path) -> FakeCifar:
    files, data, labels = fake_batch_files()
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", files)
    folder = tmp_path / "extracted" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    return FakeCifar(data, labels, archive, folder, md5)
