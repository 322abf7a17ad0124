"""Bad input raises ValueError naming the op and the offending value, before memory is touched."""

import os
import subprocess
import sys

import numpy as np
import pytest

import xsil


@pytest.fixture
def wq(rng):
    return xsil.quantize(rng.standard_normal((8, 64)).astype(np.float32), "Q4_0")


def test_k_not_multiple_of_block(rng):
    x = rng.standard_normal((1, 100)).astype(np.float32)
    w = np.zeros((4, 57), np.uint8)
    with pytest.raises(ValueError, match=r"\[matmul\] K=100 is not a multiple of the Q4_0 block size 32"):
        xsil.matmul(x, w, "Q4_0")
    with pytest.raises(ValueError, match=r"\[matmul\] K=100 is not a multiple of the Q4_K block size 256"):
        xsil.matmul(x, w, "Q4_K")


def test_wrong_row_bytes(wq, rng):
    x = rng.standard_normal((1, 128)).astype(np.float32)
    with pytest.raises(ValueError, match=r"\[matmul\] w has 36 bytes per row; K=128 in Q4_0 needs 72"):
        xsil.matmul(x, wq, "Q4_0")


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32])
def test_wrong_x_dtype(wq, dtype):
    with pytest.raises(ValueError, match=r"\[matmul\] x must be float32"):
        xsil.matmul(np.zeros((1, 64), dtype), wq, "Q4_0")


def test_wrong_w_dtype(rng):
    x = rng.standard_normal((1, 64)).astype(np.float32)
    with pytest.raises(ValueError, match=r"\[matmul\] w must be uint8"):
        xsil.matmul(x, np.zeros((4, 36), np.int8), "Q4_0")
    with pytest.raises(ValueError, match=r"\[matmul\] w must be a uint8 numpy array"):
        xsil.matmul(x, [[1, 2]], "Q4_0")


def test_non_contiguous(wq, rng):
    x = rng.standard_normal((2, 128)).astype(np.float32)[:, ::2]
    with pytest.raises(ValueError, match=r"\[matmul\] x must be C-contiguous"):
        xsil.matmul(x, wq, "Q4_0")
    w2 = np.zeros((8, 72), np.uint8)[:, ::2]
    with pytest.raises(ValueError, match=r"\[matmul\] w must be C-contiguous"):
        xsil.matmul(np.zeros((1, 64), np.float32), w2, "Q4_0")


def test_wrong_ndim(wq):
    with pytest.raises(ValueError, match=r"\[matmul\] x must be 2-D"):
        xsil.matmul(np.zeros((1, 1, 64), np.float32), wq, "Q4_0")
    with pytest.raises(ValueError, match=r"\[matmul\] w must be 2-D"):
        xsil.matmul(np.zeros((1, 64), np.float32), wq.ravel(), "Q4_0")


def test_empty_shapes(wq):
    with pytest.raises(ValueError, match=r"\[matmul\] M=0"):
        xsil.matmul(np.zeros((0, 64), np.float32), wq, "Q4_0")
    with pytest.raises(ValueError, match=r"\[matmul\] N=0"):
        xsil.matmul(np.zeros((1, 64), np.float32), np.zeros((0, 36), np.uint8), "Q4_0")


def test_unknown_format(wq):
    with pytest.raises(ValueError, match=r"\[matmul\] unsupported format 'Q2_K'; expected one of Q4_0, Q4_1, "
                       r"Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K"):
        xsil.matmul(np.zeros((1, 64), np.float32), wq, "Q2_K")
    for fmt in ("Q4_K", "Q6_K"):
        with pytest.raises(ValueError, match=rf"\[quantize\] unsupported format '{fmt}'; "
                           r"expected one of Q4_0, Q4_1, Q5_0, Q5_1, Q8_0"):
            xsil.quantize(np.zeros((1, 256), np.float32), fmt)
    with pytest.raises(ValueError, match=r"\[matmul\] K=64 is not a multiple of the Q6_K block size 256"):
        xsil.matmul(np.zeros((1, 64), np.float32), np.zeros((1, 52), np.uint8), "Q6_K")
    with pytest.raises(ValueError, match=r"\[matmul\] w has 36 bytes per row; K=64 in Q5_1 needs 48"):
        xsil.matmul(np.zeros((1, 64), np.float32), wq, "Q5_1")
    with pytest.raises(ValueError, match=r"\[matmul\] fmt must be a string"):
        xsil.matmul(np.zeros((1, 64), np.float32), wq, 2)


@pytest.mark.parametrize("threads", [0, -1, 5000, 1.5, True, "2"])
def test_bad_threads(wq, threads):
    with pytest.raises(ValueError, match=r"\[matmul\] threads"):
        xsil.matmul(np.zeros((1, 64), np.float32), wq, "Q4_0", threads=threads)


def test_unknown_and_unavailable_isa(wq):
    x = np.zeros((1, 64), np.float32)
    with pytest.raises(ValueError, match=r"unknown ISA tier 'sse9'.*available here"):
        xsil.matmul(x, wq, "Q4_0", isa="sse9")
    missing = [t["name"] for t in xsil.cpu_info()["tiers"] if not t["available"]]
    for name in missing:
        with pytest.raises(ValueError, match=rf"ISA tier '{name}' is not supported by this CPU"):
            xsil.matmul(x, wq, "Q4_0", isa=name)


def test_env_isa_unknown_fails_clearly():
    env = dict(os.environ, XSIL_CPU_ISA="sse9")
    r = subprocess.run([sys.executable, "-c", "import xsil"], env=env, capture_output=True, text=True)
    assert r.returncode != 0
    assert "XSIL_CPU_ISA='sse9'" in r.stderr and "unknown ISA tier" in r.stderr


def test_env_isa_forces_tier():
    env = dict(os.environ, XSIL_CPU_ISA="ref")
    r = subprocess.run([sys.executable, "-c", "import xsil; print(xsil.cpu_info()['tier'])"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ref"


def test_quantize_errors():
    with pytest.raises(ValueError, match=r"\[quantize\] cols=40 is not a multiple of the Q4_0 block size 32"):
        xsil.quantize(np.zeros((2, 40), np.float32), "Q4_0")
    with pytest.raises(ValueError, match=r"\[quantize\] x must be float32"):
        xsil.quantize(np.zeros((2, 64)), "Q4_0")
    with pytest.raises(ValueError, match=r"\[quantize\] x must be 2-D"):
        xsil.quantize(np.zeros(64, np.float32), "Q4_0")
    x = np.zeros((2, 64), np.float32)
    x[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"\[quantize\] x has a non-finite value at flat index 67"):
        xsil.quantize(x, "Q4_0")
    x[1, 3] = np.inf
    with pytest.raises(ValueError, match=r"non-finite"):
        xsil.quantize(x, "Q8_0")


def test_dequantize_errors():
    with pytest.raises(ValueError, match=r"\[dequantize\] blocks have 30 bytes per row; "
                       r"cols=64 in Q4_0 need 36"):
        xsil.dequantize(np.zeros((2, 30), np.uint8), "Q4_0", 64)
    with pytest.raises(ValueError, match=r"\[dequantize\] cols=100 is not a positive multiple"):
        xsil.dequantize(np.zeros((2, 36), np.uint8), "Q4_0", 100)
    with pytest.raises(ValueError, match=r"\[dequantize\] blocks have 37 bytes, not a whole number of rows"):
        xsil.dequantize(np.zeros(37, np.uint8), "Q4_0", 64)
    with pytest.raises(ValueError, match=r"\[dequantize\] blocks must be uint8"):
        xsil.dequantize(np.zeros((2, 36), np.float32), "Q4_0", 64)
    with pytest.raises(ValueError, match=r"\[dequantize\] cols must be an int"):
        xsil.dequantize(np.zeros((2, 36), np.uint8), "Q4_0", 64.0)


def test_pack_errors(wq):
    with pytest.raises(ValueError, match=r"\[pack\] w has 35 bytes per row, "
                       r"not a whole number of Q4_0 blocks"):
        xsil.pack(np.zeros((4, 35), np.uint8), "Q4_0")
    ro = wq.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"\[pack\] inplace=True needs a writeable array"):
        xsil.pack(ro, "Q4_0", inplace=True)


def test_packed_mismatch(wq, rng):
    tiers = xsil.cpu_info()["available_tiers"]
    for t in tiers:
        p = xsil.pack(wq, "Q4_0", isa=t)
        if p is None:
            continue
        with pytest.raises(ValueError, match=r"\[matmul\] packed weights are Q4_0, not Q8_0"):
            xsil.matmul(np.zeros((1, 64), np.float32), p, "Q8_0")
        with pytest.raises(ValueError, match=r"\[matmul\] x has K=128 but the packed weights have K=64"):
            xsil.matmul(np.zeros((1, 128), np.float32), p, "Q4_0")
        others = [o for o in tiers if o != t]
        if others:
            with pytest.raises(ValueError, match=rf"packed for tier '{t}', not '{others[0]}'"):
                xsil.matmul(np.zeros((1, 64), np.float32), p, "Q4_0", isa=others[0])


def test_equivalent_dtype_from_ctypes_buffer_is_accepted():
    import ctypes

    buf = (ctypes.c_uint8 * 72)()
    w = np.ctypeslib.as_array(buf).reshape(2, 36)  # dtype '<u1' object from ctypes, equal to uint8
    assert xsil.matmul(np.ones((1, 64), np.float32), w, "Q4_0").shape == (1, 2)
