"""pytest-benchmark version of the decode-attention table (a small grid; see attention_table.py).

    python -m pytest bench/test_attention_bench.py --benchmark-only

Each benchmark is one decode step of one layer at context 2048, cycling through enough layers that
K/V comes from memory; xsil and ONNX Runtime's GroupQueryAttention on the same shapes.
"""

import itertools
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _attention as A  # noqa: E402

CTX = 2048
_cases = {}


def case(shape, dtype):
    key = (shape, dtype)
    if key not in _cases:
        A.COLD_BYTES = 64 << 20
        _cases[key] = A.DecodeCase(shape, CTX, dtype).build()
    return _cases[key]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
@pytest.mark.parametrize("shape", ["tinyllama", "llama7b"])
def test_xsil_decode(benchmark, shape, dtype, threads):
    c = case(shape, dtype)
    np.testing.assert_allclose(c.step(0, threads), c.reference(), atol=1e-2)
    layers = itertools.count()
    benchmark.extra_info["kv_bytes"] = c.kv_bytes
    benchmark(lambda: c.step(next(layers), threads))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", ["tinyllama", "llama7b"])
def test_ort_gqa_decode(benchmark, shape, threads):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    c = case(shape, "f16")
    o = A.OrtDecode(c, threads)
    o.check()
    layers = itertools.count()
    benchmark(lambda: o.step(next(layers)))


@pytest.mark.parametrize("threads", [1, 2])
def test_stream_read(benchmark, threads):
    buf = np.ones(128 << 20, np.uint8)
    benchmark.extra_info["bytes"] = buf.nbytes
    benchmark(lambda: A._core._stream_read(buf, threads))
