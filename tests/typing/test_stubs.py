"""python/xsil/_core.pyi matches the compiled module (mypy's stubtest), and the package is typed."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import xsil


def test_py_typed_installed():
    assert (Path(xsil.__file__).parent / "py.typed").is_file()


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy not installed")
def test_stubtest(tmp_path):
    allow = Path(__file__).with_name("stubtest-allowlist.txt")
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "xsil._core", "--allowlist", str(allow)],
        cwd=tmp_path,  # mypy's cache goes there
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
