"""matmul against the independent NumPy reference, on every ISA tier this machine has."""

import numpy as np
import pytest

import xsil
from xsil.testing import reference as ref

FMTS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")


def make_weights(fmt, N, K, rng):
    if fmt in K_QUANTS:
        return ref.random_blocks(fmt, N, K, rng)
    return xsil.quantize((rng.standard_normal((N, K)) * 0.05).astype(np.float32), fmt)


def check_int8_path(got, x, wq, fmt):
    """The fast path must equal the exact integer model up to float32 accumulation error."""
    want = ref.matmul_int8(x, wq, fmt)
    K = x.shape[1]
    # float32 accumulation over K/bs block terms: bound by K/bs * eps * sum|terms| (generous 4x).
    absw = np.abs(ref.dequantize(wq, fmt, K)).astype(np.float64)
    mag = np.abs(x).astype(np.float64) @ absw.T + 1e-30
    tol = 4 * (K / 32 + 8) * 2.0**-23 * mag
    err = np.abs(got.astype(np.float64) - want)
    assert (err <= tol).all(), f"max err {err.max():.3e}, worst err/tol {(err / tol).max():.2f}"
    # and within the activation-quantization bound of the exact product
    exact = ref.matmul_exact(x, wq, fmt)
    bound = ref.int8_error_bound(x, wq, fmt) + tol
    assert (np.abs(got - exact) <= bound).all()


# (M, N, K) grid: awkward N (1, not multiples of 8/16), K from one block to 11008, M across decode and
# prefill.
SHAPES = [
    (1, 1, 256),
    (1, 7, 512),
    (1, 33, 4096),
    (1, 100, 11008),
    (3, 17, 1024),
    (17, 24, 768),
    (128, 40, 512),
    (513, 19, 256),
]


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_matmul_matches_reference(tier, fmt, M, N, K, rng):
    wq = make_weights(fmt, N, K, rng)
    x = rng.standard_normal((M, K)).astype(np.float32)
    got = xsil.matmul(x, wq, fmt, isa=tier)
    assert got.shape == (M, N) and got.dtype == np.float32
    check_int8_path(got, x, wq, fmt)


@pytest.mark.parametrize("fmt", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_matmul_k32(tier, fmt, rng):
    wq = make_weights(fmt, 45, 32, rng)
    x = rng.standard_normal((5, 32)).astype(np.float32)
    check_int8_path(xsil.matmul(x, wq, fmt, isa=tier), x, wq, fmt)


@pytest.mark.parametrize("fmt", FMTS)
def test_thread_count_does_not_change_results(tier, fmt, rng):
    K = 1024
    wq = make_weights(fmt, 203, K, rng)
    for M in (1, 70):
        x = rng.standard_normal((M, K)).astype(np.float32)
        y1 = xsil.matmul(x, wq, fmt, isa=tier, threads=1)
        y2 = xsil.matmul(x, wq, fmt, isa=tier, threads=2)
        np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("fmt", FMTS)
def test_exact_path(fmt, rng):
    K = 768
    wq = make_weights(fmt, 21, K, rng)
    x = rng.standard_normal((4, K)).astype(np.float32)
    got = xsil.matmul(x, wq, fmt, exact=True)
    want = ref.matmul_exact(x, wq, fmt)
    mag = np.abs(x).astype(np.float64) @ np.abs(ref.dequantize(wq, fmt, K)).T.astype(np.float64)
    assert (np.abs(got - want) <= K * 2.0**-23 * mag + 1e-30).all()


def test_vector_input(rng):
    wq = make_weights("Q4_0", 10, 64, rng)
    x = rng.standard_normal(64).astype(np.float32)
    y = xsil.matmul(x, wq, "Q4_0")
    assert y.shape == (10,)
    np.testing.assert_array_equal(y, xsil.matmul(x[None], wq, "Q4_0")[0])


def test_zero_activations_and_weights(tier, rng):
    wq = xsil.quantize(np.zeros((9, 64), np.float32), "Q4_0")
    x = rng.standard_normal((2, 64)).astype(np.float32)
    assert (xsil.matmul(x, wq, "Q4_0", isa=tier) == 0).all()
    wq = make_weights("Q8_0", 9, 64, rng)
    assert (xsil.matmul(np.zeros((2, 64), np.float32), wq, "Q8_0", isa=tier) == 0).all()


@pytest.mark.parametrize("fmt", FMTS)
def test_pack_replaces_original(tier, fmt, rng):
    K = 512
    wq = make_weights(fmt, 77, K, rng)
    x = rng.standard_normal((6, K)).astype(np.float32)
    want = xsil.matmul(x, wq, fmt, isa=tier)
    packed = xsil.pack(wq, fmt, isa=tier)
    if packed is None:
        # no packed layout: pack() returns None and the GGUF rows are used as they are
        assert fmt not in ("Q4_0",) or tier == "ref"
        return
    assert packed.nbytes == wq.nbytes and packed.shape == (77, K) and packed.tier == tier
    np.testing.assert_array_equal(xsil.matmul(x, packed, fmt), want)
    # in place: the caller's buffer is permuted, no second copy
    buf = wq.copy()
    p2 = xsil.pack(buf, fmt, isa=tier, inplace=True)
    assert p2.inplace
    np.testing.assert_array_equal(xsil.matmul(x, p2, fmt), want)
    assert sorted(buf.ravel().tolist()) == sorted(wq.ravel().tolist())  # a permutation of the bytes
