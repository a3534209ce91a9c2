"""The runtime room: what running a trained model needs, apart from training (docs/architecture.md)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[1] / "src" / "cnnkit" / "runtime"


def test_the_runtime_package_and_its_constants_import_no_torch():
    code = "import sys, cnnkit.runtime, cnnkit.runtime.constants; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_runtime_never_imports_the_engine():
    for path in RUNTIME.glob("*.py"):
        assert "cnnkit.engine" not in path.read_text(), path.name
    modules = ", ".join(
        f"cnnkit.runtime.{path.stem}" for path in sorted(RUNTIME.glob("*.py")) if path.stem != "__init__"
    )
    code = (
        f"import sys, {modules}, cnnkit.checkpoint, cnnkit.export.onnx, cnnkit.serving.traced; "
        "assert not [name for name in sys.modules if name.startswith('cnnkit.engine')], sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("old", ["preprocess", "inference", "device", "prefetch"])
def test_the_moved_modules_left_no_copy_in_the_engine(old):
    assert importlib.util.find_spec(f"cnnkit.engine.{old}") is None


def test_the_onnx_path_shares_the_runtime_constants():
    from cnnkit.inference import onnx_runtime
    from cnnkit.runtime import constants, normalization

    assert onnx_runtime.UINT8_NHWC is constants.UINT8_NHWC is normalization.UINT8_NHWC
    assert onnx_runtime.FLOAT_NCHW is constants.FLOAT_NCHW
