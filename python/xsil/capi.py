"""Where the C ABI lives: the shared library ``libxsil`` and its header ``xsil/xsil.h``.

``pip install`` puts both inside the package, next to the compiled module ``xsil._core``::

    xsil/lib/libxsil.so          (xsil.dll / libxsil.dylib elsewhere)
    xsil/include/xsil/xsil.h

In an editable install (``pip install -e .``) scikit-build-core redirects the Python files to the
source tree but installs the compiled files (``_core``, ``lib/``, ``include/``) into site-packages,
so they are found next to ``xsil._core`` in both cases; the CMake build directory and the source
tree's ``csrc/include`` are searched last.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["capi_include_dir", "capi_library_path"]

_HEADER = Path("xsil") / "xsil.h"


def _library_name() -> str:
    if sys.platform == "win32":
        return "xsil.dll"
    if sys.platform == "darwin":
        return "libxsil.dylib"
    return "libxsil.so"


def _package_dirs() -> list[Path]:
    """Directories that may hold the installed package data: the one of ``xsil._core`` first."""
    dirs: list[Path] = []
    try:
        from . import _core

        dirs.append(Path(_core.__file__).resolve().parent)
    except ImportError:  # pragma: no cover - xsil itself would not import
        pass
    from . import __path__ as pkg_path

    dirs += [Path(p).resolve() for p in pkg_path]
    return list(dict.fromkeys(dirs))


def _source_root() -> Path | None:
    """The checkout this module runs from, in an editable install; None otherwise."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "csrc").is_dir() else None


def capi_library_path() -> Path:
    """Absolute path of the installed C ABI library (``libxsil.so`` on Linux).

    Raises ``FileNotFoundError`` listing the places searched if it is not there (a build without
    ``csrc/capi``, or a broken install).
    """
    name = _library_name()
    candidates = [d / "lib" / name for d in _package_dirs()]
    root = _source_root()
    if root is not None:
        build = root / "build"
        candidates += sorted(build.glob(f"*/{name}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for c in candidates:
        if c.is_file():
            return c
    searched = ", ".join(str(c) for c in candidates) or "(nothing)"
    raise FileNotFoundError(
        f"[capi] {name} not found; searched: {searched}. Reinstall xsil (pip install .) so the C ABI "
        "library is built and installed."
    )


def capi_include_dir() -> Path:
    """Directory to pass as ``-I`` so that ``#include <xsil/xsil.h>`` finds the C ABI header.

    Raises ``FileNotFoundError`` if the header is not installed.
    """
    candidates = [d / "include" for d in _package_dirs()]
    root = _source_root()
    if root is not None:
        candidates.append(root / "csrc" / "include")
    for c in candidates:
        if (c / _HEADER).is_file():
            return c
    searched = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"[capi] header {_HEADER.as_posix()} not found; searched: {searched}")
