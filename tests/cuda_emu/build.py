"""Build xsil's CUDA extension (csrc/cuda) against the xemu CPU emulator.

``build()`` returns the path of an extension module named ``_cuda_emu`` compiled by the host C++ compiler
from the same sources as the real ``xsil._cuda`` (after rewriting ``k<<<...>>>(...)`` launches), with
``tests/cuda_emu/include`` shadowing the CUDA headers. The result is cached under
``$XSIL_CACHE_DIR/cuda-emu`` (or ``~/.cache/xsil/cuda-emu``) by a hash of every input, so only the
first run after a change pays the compile (about a minute on two cores).

Run as a script to build and print the path: ``python tests/cuda_emu/build.py``.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CSRC = ROOT / "csrc"

# Every source of the real extension (CMakeLists.txt: XSIL_CUDA_SOURCES + the binding), plus the
# emulator runtime. Keep in step with CMakeLists.txt.
def sources() -> list[Path]:
    cuda = sorted((CSRC / "cuda").glob("*.cu")) + sorted((CSRC / "cuda").glob("*.cpp"))
    extra = [CSRC / p for p in _cmake_extra_sources()]
    return cuda + extra + [HERE / "xemu.cpp"]


def _cmake_extra_sources() -> list[str]:
    """Non-CUDA sources CMake links into the CUDA kernels library (XSIL_CUDA_HOST_SOURCES)."""
    text = (ROOT / "CMakeLists.txt").read_text()
    m = re.search(r"set\(XSIL_CUDA_HOST_SOURCES([^)]*)\)", text)
    if not m:
        return []
    return [p.replace("csrc/", "", 1) for p in m.group(1).split()]


class EmulatorUnavailable(RuntimeError):
    """No host compiler or headers to build the emulator (a reason to skip, not a failure)."""


_LAUNCH = re.compile(
    r"(?P<k>\b[A-Za-z_][\w:]*(?:\s*<(?:[^<>;]|<[^<>;]*>)*>)?)\s*<<<(?P<cfg>.*?)>>>\s*\(", re.S
)


def rewrite_launches(src: str) -> str:
    """``k<<<g, b, s, st>>>(args)`` -> ``::xemu::launch(k, "k", g, b, s, st)(args)``."""

    def sub(m: re.Match) -> str:
        k = m.group("k").strip()
        name = re.sub(r"\s+", " ", k)
        return f'::xemu::launch({k}, "{name}", {m.group("cfg").strip()})('

    return _LAUNCH.sub(sub, src)


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        raise EmulatorUnavailable("no C++ compiler (g++/clang++) on PATH")
    return cxx


def _includes() -> list[str]:
    try:
        import pybind11
    except ImportError as e:
        raise EmulatorUnavailable(f"pybind11 is not installed ({e})") from e
    py_inc = sysconfig.get_paths()["include"]
    if not (Path(py_inc) / "Python.h").exists():
        raise EmulatorUnavailable(f"Python headers not found in {py_inc}")
    return [pybind11.get_include(), py_inc]


_UBSAN: list[str] | None = None


def _sanitize_flags() -> list[str]:
    """Misaligned typed accesses (an int4 / uint4 load from an address that is not 16-byte aligned)
    fault on a GPU but not on x86: UBSan's alignment check makes them abort here too. Dropped (with a
    note) when this compiler cannot link it into a shared library (no libubsan)."""
    global _UBSAN
    if os.environ.get("XSIL_EMU_UBSAN", "1") == "0":
        return []
    if _UBSAN is None:
        flags = ["-fsanitize=alignment", "-fno-sanitize-recover=alignment"]
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            src = Path(d) / "t.cpp"
            src.write_text("int f(const int* p) { return *p; }\n")
            p = subprocess.run(
                [_compiler(), *flags, "-fPIC", "-shared", str(src), "-o", str(Path(d) / "t.so")],
                capture_output=True, text=True,
            )
        if p.returncode:
            print("note: the CUDA emulator builds without UBSan's alignment check "
                  f"({p.stderr.strip()[-200:]})", file=sys.stderr)
            flags = []
        _UBSAN = flags
    return _UBSAN


def cache_dir() -> Path:
    base = os.environ.get("XSIL_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "xsil")
    return Path(base) / "cuda-emu"


def _inputs() -> list[Path]:
    files = set(sources())
    for d in (CSRC / "cuda", CSRC / "include", HERE / "include"):
        files.update(p for p in d.rglob("*") if p.is_file())
    files.update([HERE / "build.py", ROOT / "CMakeLists.txt"])
    for p in _cmake_extra_sources():
        files.update((CSRC / p).parent.glob("*.h"))
    return sorted(files)


def build(verbose: bool = False) -> Path:
    cxx = _compiler()
    incs = _includes()
    h = hashlib.sha256()
    for f in _inputs():
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    h.update(cxx.encode() + sys.version.encode() + " ".join(_sanitize_flags()).encode())
    key = h.hexdigest()[:16]
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    out_dir = cache_dir() / key
    out = out_dir / f"_cuda_emu{suffix}"
    if out.exists():
        return out
    work = out_dir.with_name(key + f".tmp{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    (work / "cuda").mkdir(parents=True)
    # rewritten copies of every CUDA file; the build dir comes first on the include path so that
    # "cuda/common.cuh" resolves to the rewritten copy
    for f in sorted((CSRC / "cuda").iterdir()):
        if f.suffix in (".cu", ".cuh", ".h", ".cpp"):
            text = f.read_text()
            if f.suffix in (".cu", ".cuh"):
                text = rewrite_launches(text)
            # its own module name: CPython caches single-phase extension modules by name, so an
            # emulated "_cuda" loaded next to the real one would come back as the real one
            text = text.replace("PYBIND11_MODULE(_cuda,", "PYBIND11_MODULE(_cuda_emu,")
            (work / "cuda" / f.name).write_text(f'#line 1 "{f}"\n' + text)
    flags = [
        "-std=c++17", "-O2", "-fPIC", *_sanitize_flags(), "-DXSIL_CUDA_EMU=1", "-fvisibility=hidden", "-ffp-contract=off",
        "-Wno-unknown-pragmas", "-Wno-attributes", "-Wno-ignored-attributes",
        f"-I{work}", f"-I{HERE / 'include'}", f"-I{CSRC / 'include'}", f"-I{CSRC}",
    ] + [f"-I{i}" for i in incs]
    jobs = []
    for src in sources():
        if src.parent == CSRC / "cuda":
            src_c = work / "cuda" / src.name
        else:
            src_c = src
        obj = work / (src.name + ".o")
        jobs.append(([cxx, *flags, "-x", "c++", "-c", str(src_c), "-o", str(obj)], obj))

    def run(cmd):
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(f"emulator build failed:\n{' '.join(cmd)}\n{p.stderr[-6000:]}")
        if verbose and p.stderr:
            print(p.stderr, file=sys.stderr)

    with cf.ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as ex:
        list(ex.map(run, [c for c, _ in jobs]))
    tmp_out = work / out.name
    run([cxx, "-shared", *_sanitize_flags(), "-o", str(tmp_out), *[str(o) for _, o in jobs], "-lpthread"])
    out_dir.mkdir(parents=True, exist_ok=True)
    os.replace(tmp_out, out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def load(path: Path | None = None):
    """Import the emulated extension (module ``xsil._cuda_emu``)."""
    import importlib.util

    path = path or build()
    spec = importlib.util.spec_from_file_location("xsil._cuda_emu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


if __name__ == "__main__":
    print(build(verbose=True))
