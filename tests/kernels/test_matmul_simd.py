"""SIMD-tier specifics: every x86 tier computes each output with the ref tier's operation order
(exact int32 block dots, then the same float steps), so results are bit-identical to ref, packed
or not, whatever the thread count. Also: packed groups with a partial final group, awkward M, and
the non-VNNI AVX-512 build (forced through XSIL_AVX512_NO_VNNI in a subprocess)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import xsil
from xsil.testing import reference as ref

SIMD = [t for t in xsil.cpu_info()["available_tiers"] if t != "ref"]
pytestmark = pytest.mark.skipif(not SIMD, reason="no SIMD tier on this machine")


ALL = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]


def weights(fmt, N, K, rng):
    if fmt in ("Q4_K", "Q5_K", "Q6_K"):
        return ref.random_blocks(fmt, N, K, rng)
    return xsil.quantize((rng.standard_normal((N, K)) * 0.05).astype(np.float32), fmt)


@pytest.fixture(params=SIMD or ["none"])
def simd_tier(request):
    return request.param


@pytest.mark.parametrize("fmt", ALL)
@pytest.mark.parametrize("M", [1, 3, 17, 128, 513])
def test_bit_identical_to_ref(simd_tier, fmt, M, rng):
    N, K = 37, 512  # N: two full 16-row groups + a partial one (8-row groups: 4 full + 5)
    w = weights(fmt, N, K, rng)
    x = rng.standard_normal((M, K)).astype(np.float32)
    want = xsil.matmul(x, w, fmt, isa="ref")
    np.testing.assert_array_equal(xsil.matmul(x, w, fmt, isa=simd_tier), want)
    np.testing.assert_array_equal(xsil.matmul(x, w, fmt, isa=simd_tier, threads=1), want)


@pytest.mark.parametrize("fmt", ["Q4_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K"])  # the formats with packed layouts
@pytest.mark.parametrize("N", [1, 5, 8, 15, 16, 17, 31, 33, 200])
@pytest.mark.parametrize("M", [1, 3, 17, 128, 513])
def test_packed_partial_groups(simd_tier, fmt, N, M, rng):
    K = 256
    w = weights(fmt, N, K, rng)
    x = rng.standard_normal((M, K)).astype(np.float32)
    want = xsil.matmul(x, w, fmt, isa="ref")
    packed = xsil.pack(w, fmt, isa=simd_tier)
    if packed is None:
        assert fmt != "Q4_0", "every x86 tier packs Q4_0"
        pytest.skip(f"{simd_tier} has no packed {fmt} layout on this CPU")
    assert packed.nbytes == w.nbytes
    for threads in (1, 2):
        np.testing.assert_array_equal(xsil.matmul(x, packed, fmt, threads=threads), want)
    buf = w.copy()
    p2 = xsil.pack(buf, fmt, isa=simd_tier, inplace=True)
    np.testing.assert_array_equal(xsil.matmul(x, p2, fmt), want)


@pytest.mark.parametrize("fmt", ALL)
def test_k11008(simd_tier, fmt, rng):
    N, K = 45, 11008
    w = weights(fmt, N, K, rng)
    for M in (1, 3):
        x = rng.standard_normal((M, K)).astype(np.float32)
        want = xsil.matmul(x, w, fmt, isa="ref")
        np.testing.assert_array_equal(xsil.matmul(x, w, fmt, isa=simd_tier), want)
        p = xsil.pack(w, fmt, isa=simd_tier)
        if p is not None:
            np.testing.assert_array_equal(xsil.matmul(x, p, fmt), want)
        # and against the independent NumPy model of the integer path
        got = xsil.matmul(x, w, fmt, isa=simd_tier)
        want64 = ref.matmul_int8(x, w, fmt)
        mag = np.abs(x).astype(np.float64) @ np.abs(ref.dequantize(w, fmt, K)).T.astype(np.float64)
        assert (np.abs(got - want64) <= 4 * (K / 32 + 8) * 2.0**-23 * mag + 1e-30).all()


def test_k32_single_block(simd_tier, rng):
    w = weights("Q4_0", 19, 32, rng)
    x = rng.standard_normal((513, 32)).astype(np.float32)
    want = xsil.matmul(x, w, "Q4_0", isa="ref")
    np.testing.assert_array_equal(xsil.matmul(x, w, "Q4_0", isa=simd_tier), want)
    np.testing.assert_array_equal(xsil.matmul(x, xsil.pack(w, "Q4_0", isa=simd_tier), "Q4_0"), want)


def test_extreme_activations(simd_tier, rng):
    """Quants at +-127 everywhere and nibbles at 0/15: the int16 paths must not saturate."""
    K, N = 1024, 40
    w = xsil.quantize(np.where(rng.random((N, K)) < 0.5, -1.0, 1.0).astype(np.float32) * 0.01, "Q4_0")
    w8 = xsil.quantize(np.where(rng.random((N, K)) < 0.5, -1.0, 1.0).astype(np.float32), "Q8_0")
    x = np.where(rng.random((4, K)) < 0.5, -3.0, 3.0).astype(np.float32)
    for wq, fmt in ((w, "Q4_0"), (w8, "Q8_0")):
        np.testing.assert_array_equal(xsil.matmul(x, wq, fmt, isa=simd_tier), xsil.matmul(x, wq, fmt, isa="ref"))
    # Largest quants (all bits set or all clear) with extreme scales: every int16 pair sum at its bound.
    for fmt in ("Q4_1", "Q5_0", "Q5_1", "Q5_K", "Q6_K"):
        for fill in (0x00, 0xFF):
            wq = ref.random_blocks(fmt, N, K, rng)
            bs, ts = ref.BLOCK[fmt]
            b = wq.reshape(-1, ts)
            if fmt == "Q6_K":
                b[:, 0:192] = fill
                b[:, 192:208] = np.where(rng.random((b.shape[0], 16)) < 0.5, 0x80, 0x7F)  # -128 / 127
            elif fmt == "Q5_K":
                b[:, 4:16] = 0xFF  # 6-bit scales and mins at 63
                b[:, 16:] = fill
            else:
                b[:, 4 if fmt == "Q4_1" else (2 if fmt == "Q5_0" else 4) :] = fill
            np.testing.assert_array_equal(xsil.matmul(x, wq, fmt, isa=simd_tier), xsil.matmul(x, wq, fmt, isa="ref"))
            pq = xsil.pack(wq, fmt, isa=simd_tier)
            if pq is not None:  # packed kernels hit the same bounds (int16 pair sums, int32 sub-block sums)
                np.testing.assert_array_equal(xsil.matmul(x, pq, fmt), xsil.matmul(x, wq, fmt, isa="ref"))
            want = ref.matmul_int8(x, wq, fmt)
            assert np.allclose(xsil.matmul(x, wq, fmt, isa=simd_tier), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


_NO_VNNI_SCRIPT = r"""
import numpy as np, xsil
from xsil.testing import reference as ref
rng = np.random.default_rng(7)
for fmt in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"):
    for M, N, K in ((1, 37, 512), (17, 33, 768), (130, 20, 256)):
        w = ref.random_blocks(fmt, N, K, rng)
        x = rng.standard_normal((M, K)).astype(np.float32)
        want = xsil.matmul(x, w, fmt, isa="ref")
        assert np.array_equal(xsil.matmul(x, w, fmt, isa="avx512"), want), (fmt, M, N, K)
        p = xsil.pack(w, fmt, isa="avx512")
        if p is not None:
            assert np.array_equal(xsil.matmul(x, p, fmt), want), (fmt, M, N, K)
print("ok")
"""


@pytest.mark.skipif("avx512" not in SIMD, reason="no avx512 tier here")
def test_avx512_without_vnni():
    env = dict(os.environ, XSIL_AVX512_NO_VNNI="1")
    r = subprocess.run([sys.executable, "-c", _NO_VNNI_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


_GUARD_SCRIPT = r"""
import ctypes, mmap, sys
import numpy as np, xsil
from xsil.testing import reference as ref

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PAGE = mmap.PAGESIZE

def guarded(nbytes, at_end):
    # nbytes of memory with a PROT_NONE page right after (at_end) or right before the data.
    n = (nbytes + PAGE - 1) // PAGE * PAGE
    base = libc.mmap(None, n + 2 * PAGE, 3, 0x22, -1, 0)   # RW, MAP_PRIVATE|MAP_ANONYMOUS
    assert base not in (None, ctypes.c_void_p(-1).value)
    assert libc.mprotect(base, PAGE, 0) == 0 and libc.mprotect(base + PAGE + n, PAGE, 0) == 0
    start = base + PAGE + (n - nbytes if at_end else 0)
    return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(start), dtype=np.uint8)

rng = np.random.default_rng(3)
tiers = [t for t in xsil.cpu_info()["available_tiers"] if t != "ref"]
for fmt in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"):
    for M, N, K in ((1, 1, 256), (1, 17, 256), (3, 37, 512), (7, 33, 256), (70, 50, 256)):
        src = ref.random_blocks(fmt, N, K, rng)
        for at_end in (True, False):
            w = guarded(src.nbytes, at_end).reshape(src.shape)
            w[...] = src
            xg = guarded(M * K * 4, at_end).view(np.float32).reshape(M, K)
            xg[...] = rng.standard_normal((M, K)).astype(np.float32)
            want = xsil.matmul(np.array(xg), src, fmt, isa="ref")
            for t in tiers:
                assert np.array_equal(xsil.matmul(xg, w, fmt, isa=t), want), (fmt, M, N, K, t)
                p = xsil.pack(w, fmt, isa=t)
                if p is not None:
                    assert np.array_equal(xsil.matmul(xg, p, fmt), want)
                    w2 = guarded(src.nbytes, at_end).reshape(src.shape)
                    w2[...] = src
                    p2 = xsil.pack(w2, fmt, isa=t, inplace=True)
                    assert np.array_equal(xsil.matmul(xg, p2, fmt), want)
print("ok")
"""


def test_no_reads_outside_buffers():
    """Weights and activations placed right before / right after a PROT_NONE page: any read past
    either end of a buffer would crash the subprocess."""
    if not sys.platform.startswith("linux"):
        pytest.skip("uses mmap/mprotect through libc")
    r = subprocess.run([sys.executable, "-c", _GUARD_SCRIPT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, (r.returncode, r.stderr[-2000:])


@pytest.mark.parametrize("fmt", ALL)
def test_odd_activations_match_ref(simd_tier, fmt, rng):
    """Activation quantization matches ref byte for byte also for blocks so tiny that 1/d overflows,
    and for NaN / inf entries (results are then meaningless, but tiers stay comparable)."""
    K, N = 512, 40
    w = weights(fmt, N, K, rng)
    x = rng.standard_normal((6, K)).astype(np.float32)
    x[0, :256] *= np.float32(1e-39)      # subnormal block maxima: d subnormal, 1/d = inf
    x[1, 32:64] = 0.0
    x[1, 40] = np.float32(1e-45)         # a single denormal in a zero block
    x[2, 5] = np.nan
    x[3, 300] = np.inf
    x[4, 7] = -np.inf
    want = xsil.matmul(x, w, fmt, isa="ref")
    got = xsil.matmul(x, w, fmt, isa=simd_tier)
    np.testing.assert_array_equal(got, want)  # NaN positions must agree too
    p = xsil.pack(w, fmt, isa=simd_tier)
    if p is not None:
        np.testing.assert_array_equal(xsil.matmul(x, p, fmt), want)
