"""The CUDA-on-CPU emulator (tests/cuda_emu) that runs xsil's CUDA sources when no GPU is present:
its own semantics checked against independent expectations, so that a kernel test passing on it
means something."""

import os
import shutil
import subprocess

import numpy as np
import pytest

EMU = os.path.join(os.path.dirname(__file__), "..", "cuda_emu")
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler")


@pytest.fixture(scope="module")
def selftest(tmp_path_factory):
    exe = str(tmp_path_factory.mktemp("xemu") / "selftest")
    base = [CXX, "-std=c++17", "-O1", "-ffp-contract=off", f"-I{EMU}/include", f"{EMU}/selftest.cpp",
            f"{EMU}/xemu.cpp", "-o", exe, "-lpthread"]
    ubsan = ["-fsanitize=alignment", "-fno-sanitize-recover=alignment"]
    # UBSan's alignment check when this compiler can link it (as tests/cuda_emu/build.py does)
    has_ubsan = subprocess.run(base + ubsan, capture_output=True).returncode == 0
    if not has_ubsan:
        subprocess.run(base, check=True)

    def run(mode, stdin=None):
        if mode == "misaligned" and not has_ubsan:
            pytest.skip("no UBSan (libubsan) for this compiler: the alignment check is off")
        return subprocess.run([exe, mode], input=stdin, capture_output=True, text=True, timeout=120)

    return run


def test_half_conversions_match_numpy(selftest):
    out = np.array(selftest("half").stdout.split(), dtype=np.uint64).reshape(-1, 2)
    halves = np.arange(65536, dtype=np.uint16)
    finite = np.isfinite(halves.view(np.float16))
    want_f = halves.view(np.float16).astype(np.float32).view(np.uint32)
    nan = np.isnan(halves.view(np.float16))
    np.testing.assert_array_equal(out[~nan, 0], want_f[~nan])
    np.testing.assert_array_equal(out[~nan, 1], halves[~nan])  # exact round trip
    # float -> half rounding (nearest even, overflow to inf, subnormals) on random and edge floats
    rng = np.random.default_rng(0)
    f = np.concatenate([
        rng.standard_normal(20000).astype(np.float32) * np.float32(10.0) ** rng.integers(-9, 6, 20000),
        # midpoints between adjacent halves: ties go to even
        ((halves[:-1].view(np.float16).astype(np.float64) + halves[1:].view(np.float16).astype(np.float64)) / 2)
        [finite[:-1] & finite[1:]].astype(np.float32)[::7],
        np.array([65504, 65519.99, 65520, 1e9, 6e-8, 3e-8, 2.9e-8, 0.0, -0.0], np.float32),
    ])
    f = f.astype(np.float32)
    f = f[np.isfinite(f)]
    got = np.array(selftest("f2h", "\n".join(map(str, f.view(np.uint32)))).stdout.split(), dtype=np.uint16)
    with np.errstate(over="ignore"):
        want = f.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(got, want)


def test_shuffles_with_lanes_exiting(selftest):
    assert selftest("shuffles").stdout.strip() == "bad 0"


def test_shared_memory_is_per_block_and_synchronized(selftest):
    assert selftest("shared").stdout.strip() == "bad 0"


def test_missing_syncthreads_shows_in_one_of_the_warp_orders(selftest):
    # block 0 (forward order) happens to read fresh data for warp 1 only; block 1 (reversed) reads
    # stale data: the kernel's missing __syncthreads() cannot pass unnoticed
    assert selftest("missing_sync").stdout.strip() != "stale 0"


def test_atomics_across_blocks_on_several_threads(selftest):
    assert selftest("atomic").stdout.strip() == "count 12800"


def test_divergent_barrier_is_an_error_not_a_hang(selftest):
    out = selftest("deadlock").stdout
    assert out.startswith("error") and "k_divergent" in out and "deadlock" in out


def test_kernel_given_a_host_pointer_fails_the_launch(selftest):
    out = selftest("host_pointer").stdout
    assert "cudaErrorInvalidValue" in out and "host pointer" in out and "k_write" in out


def test_bad_launch_configuration(selftest):
    assert selftest("bad_config").stdout.strip() == "cudaErrorInvalidConfiguration"


def test_memcpy_checks_direction_and_bounds(selftest):
    assert selftest("memcpy_direction").stdout.split() == ["cudaErrorInvalidValue"] * 2


def test_write_past_an_allocation_faults(selftest):
    p = selftest("overrun")
    assert "in bounds ok" in p.stdout and "not caught" not in p.stdout
    assert p.returncode < 0  # killed by SIGSEGV at the guard page


def test_misaligned_vector_load_aborts(selftest):
    # a GPU faults on a misaligned 16-byte load; the emulator build checks alignment (UBSan)
    p = selftest("misaligned")
    assert "aligned ok" in p.stdout and "not caught" not in p.stdout and p.returncode != 0


def test_graph_capture_defers_and_replays(selftest):
    assert selftest("graph").stdout.strip() == "after capture 0 after 3 replays 6"
