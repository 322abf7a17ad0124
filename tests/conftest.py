import os
import sys

import numpy as np
import pytest

import xsil


def _use_cuda_emulator():
    """Without a GPU, test xsil's CUDA sources on the CPU: build them against tests/cuda_emu (cached)
    and point the cuda backend at that build (XSIL_CUDA_EXT). XSIL_TEST_CUDA_EMU=0 turns this off.
    A compile error fails the run (a broken kernel must not pass); a missing compiler only skips."""
    if os.environ.get("XSIL_TEST_CUDA_EMU", "1") == "0" or os.environ.get("XSIL_CUDA_EXT"):
        return
    try:
        from xsil import _cuda

        if _cuda.device_info()["ok"]:
            return  # a real GPU: test the real extension
    except ImportError:
        pass
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "xsil_cuda_emu_build", os.path.join(os.path.dirname(__file__), "cuda_emu", "build.py")
    )
    cuda_emu_build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cuda_emu_build)

    try:
        path = cuda_emu_build.build()
    except cuda_emu_build.EmulatorUnavailable as e:
        print(f"note: CUDA emulator unavailable ({e}); CUDA tests will skip", file=sys.stderr)
        return
    os.environ["XSIL_CUDA_EXT"] = str(path)


_use_cuda_emulator()


def available_tiers():
    return xsil.cpu_info()["available_tiers"]


@pytest.fixture(params=available_tiers())
def tier(request):
    """Every ISA tier this machine can run."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep generated models (the embedded default) out of the user's cache during tests."""
    import os

    d = str(tmp_path_factory.mktemp("xsil-cache"))
    old = os.environ.get("XSIL_CACHE_DIR")
    os.environ["XSIL_CACHE_DIR"] = d
    yield
    if old is None:
        os.environ.pop("XSIL_CACHE_DIR", None)
    else:
        os.environ["XSIL_CACHE_DIR"] = old
