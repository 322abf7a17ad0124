"""xsil.capi_library_path / capi_include_dir: found in the install, clear error when missing."""

import sys

import pytest

import xsil
from xsil import capi


def test_library_path():
    p = xsil.capi_library_path()
    assert p.is_absolute() and p.is_file()
    if sys.platform.startswith("linux"):
        assert p.name == "libxsil.so"


def test_include_dir():
    d = xsil.capi_include_dir()
    assert (d / "xsil" / "xsil.h").is_file()
    assert "XSIL_ABI_VERSION" in (d / "xsil" / "xsil.h").read_text()


def test_not_found_message(monkeypatch, tmp_path):
    monkeypatch.setattr(capi, "_package_dirs", lambda: [tmp_path])
    monkeypatch.setattr(capi, "_source_root", lambda: None)
    with pytest.raises(FileNotFoundError, match=r"\[capi\] libxsil\.so not found; searched: .*lib"):
        xsil.capi_library_path()
    with pytest.raises(FileNotFoundError, match=r"\[capi\] header xsil/xsil\.h not found"):
        xsil.capi_include_dir()


def test_editable_fallbacks(monkeypatch, tmp_path):
    """A checkout's CMake build dir and csrc/include are searched when the package has no copies."""
    root = tmp_path / "src"
    (root / "build" / "cp-tag").mkdir(parents=True)
    (root / "csrc" / "include" / "xsil").mkdir(parents=True)
    (root / "csrc" / "include" / "xsil" / "xsil.h").write_text("/* */")
    lib = root / "build" / "cp-tag" / capi._library_name()
    lib.write_bytes(b"")
    monkeypatch.setattr(capi, "_package_dirs", lambda: [tmp_path / "empty"])
    monkeypatch.setattr(capi, "_source_root", lambda: root)
    assert xsil.capi_library_path() == lib
    assert xsil.capi_include_dir() == root / "csrc" / "include"
