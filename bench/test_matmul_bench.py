"""pytest-benchmark version of the matmul benchmark (shares bench/_matmul.py with matmul_table.py).

    pytest bench/test_matmul_bench.py --benchmark-columns=median,ops --benchmark-sort=name
    pytest bench/test_matmul_bench.py -k "gemv and cold"          # a subset

extra_info of each benchmark holds the shape, threads, weight bytes, GB/s or GFLOP/s (from the
median). Cold GEMV timings cover one walk over >= 1 GiB of matrices; extra_info has per-matrix
numbers. Not part of the unit tests (testpaths = tests).
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _matmul as bm  # noqa: E402

import xsil  # noqa: E402

THREADS = [1, 2]
BACKENDS = [f"xsil-{t}" for t in bm.simd_tiers()] + ["ort", "numpy"]
SHAPES = bm.ALL_SHAPES


def _ids(s):
    return f"{s[0]}x{s[1]}"


_cache: dict = {}


def _mats(K, N, n):
    key = (K, N, n)
    if key not in _cache:
        _cache.clear()
        gc.collect()
        _cache[key] = bm.Matrices(K, N, n)
    return _cache[key]


def _runner(backend, mats, x, threads):
    if backend.startswith("xsil-"):
        return bm.xsil_fn(mats, backend[5:], x, threads), mats.q4_bytes
    if backend == "ort":
        pytest.importorskip("onnxruntime")
        fn, sess = bm.ort_fn(mats, x, threads)
        return fn, mats.N * mats.K // 2 + mats.N * mats.K // 32 * 4
    wf = [bm.dequant_q4_0(w, mats.K) for w in mats.q4]
    return bm.numpy_fn(wf, x, threads), mats.N * mats.K * 4


def _record(benchmark, kind, backend, K, N, M, threads, n, wbytes):
    med = benchmark.stats.stats.median / n
    benchmark.extra_info.update(kind=kind, backend=backend, K=K, N=N, M=M, threads=threads, matrices=n,
                                seconds_per_matmul=med, weight_bytes=wbytes, GBps=wbytes / med / 1e9,
                                GFLOPs=2.0 * M * N * K / med / 1e9)


@pytest.fixture(scope="session", autouse=True)
def _pool():
    xsil.set_num_threads(max(THREADS))


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_gemv_hot(benchmark, shape, backend, threads):
    K, N = shape
    mats = _mats(K, N, 1)
    x = np.random.default_rng(0).standard_normal((1, K)).astype(np.float32)
    fn, wb = _runner(backend, mats, x, threads)
    with bm.blas_threads(threads):
        benchmark.pedantic(fn, rounds=30, warmup_rounds=2)
    _record(benchmark, "gemv-hot", backend, K, N, 1, threads, 1, wb)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_gemv_cold(benchmark, shape, backend, threads):
    K, N = shape
    n = bm.cold_count(N * K // 32 * 18)
    mats = _mats(K, N, n)
    x = np.random.default_rng(0).standard_normal((1, K)).astype(np.float32)
    fn, wb = _runner(backend, mats, x, threads)
    with bm.blas_threads(threads):
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    _record(benchmark, "gemv-cold", backend, K, N, 1, threads, n, wb)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M", [128, 512])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_gemm(benchmark, shape, M, backend, threads):
    K, N = shape
    mats = _mats(K, N, 1)
    x = np.random.default_rng(0).standard_normal((M, K)).astype(np.float32)
    fn, wb = _runner(backend, mats, x, threads)
    with bm.blas_threads(threads):
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    _record(benchmark, "gemm", backend, K, N, M, threads, 1, wb)


@pytest.mark.parametrize("threads", THREADS)
def test_stream_read_roofline(benchmark, threads):
    from threadpoolctl import threadpool_limits

    a = np.ones((bm.GIB // 4 // 4096, 4096), np.float32)
    v = np.ones(4096, np.float32)

    with threadpool_limits(threads):
        benchmark.pedantic(lambda: a @ v, rounds=10, warmup_rounds=1)
    benchmark.extra_info.update(kind="roofline", threads=threads, GBps=a.nbytes / benchmark.stats.stats.median / 1e9)
