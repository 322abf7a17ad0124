"""RoPE conventions against the reference (and against the definition, written out by hand)."""

import numpy as np
import pytest

import xsil
from xsil.testing import attention_ref as R


@pytest.mark.parametrize("mode", ["normal", "neox"])
@pytest.mark.parametrize("hd", [64, 80, 128])
def test_rope_matches_reference(mode, hd, rng):
    x = rng.standard_normal((9, 3, hd)).astype(np.float32)
    pos = np.array([0, 1, 2, 15, 16, 100, 1000, 4095, 32767])
    for base, scale in [(10000.0, 1.0), (1e6, 0.25)]:
        got = xsil.rope(x, pos, mode=mode, freq_base=base, freq_scale=scale)
        want = R.rope(x, pos, mode, base, scale)
        np.testing.assert_allclose(got, want, atol=3e-5 * np.abs(x).max())


def test_rope_pairing_by_hand():
    d = 8
    x = np.arange(1, d + 1, dtype=np.float32)[None]
    p = 3
    th = p * 10000.0 ** (-2 * np.arange(d // 2) / d)
    # normal: (x0, x1), (x2, x3), ...
    want = x[0].astype(np.float64).copy()
    for i in range(d // 2):
        a, b = x[0, 2 * i], x[0, 2 * i + 1]
        want[2 * i], want[2 * i + 1] = a * np.cos(th[i]) - b * np.sin(th[i]), a * np.sin(th[i]) + b * np.cos(th[i])
    np.testing.assert_allclose(xsil.rope(x, [p], mode="normal")[0], want, rtol=1e-5)
    # neox: (x_i, x_{i+d/2})
    want = x[0].astype(np.float64).copy()
    for i in range(d // 2):
        a, b = x[0, i], x[0, i + d // 2]
        want[i], want[i + d // 2] = a * np.cos(th[i]) - b * np.sin(th[i]), a * np.sin(th[i]) + b * np.cos(th[i])
    np.testing.assert_allclose(xsil.rope(x, [p], mode="neox")[0], want, rtol=1e-5)


def test_rope_position_zero_and_none():
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(xsil.rope(x, [0, 0]), x)
    np.testing.assert_array_equal(xsil.rope(x, [5, 7], mode="none"), x)


def test_rope_errors():
    x = np.ones((2, 5), np.float32)
    with pytest.raises(ValueError, match=r"\[rope\] head_dim=5 must be even"):
        xsil.rope(x, [0, 1])
    with pytest.raises(ValueError, match=r"\[rope\] positions must be 1-D with 2 entries"):
        xsil.rope(np.ones((2, 4), np.float32), [0])
    with pytest.raises(ValueError, match=r"\[rope\] rope mode 'gptj'"):
        xsil.rope(np.ones((2, 4), np.float32), [0, 1], mode="gptj")
    with pytest.raises(ValueError, match=r"\[rope\] x must be float32"):
        xsil.rope(np.ones((2, 4)), [0, 1])


# -- per-pair frequency factors (GGUF rope_freqs.weight, Llama 3.1/3.2) ---------------------------
def _factors(hd, rng):
    """Llama 3-style: 1 for the fast pairs, 8 for the slow ones, something in between."""
    f = np.ones(hd // 2, np.float32)
    f[hd // 4:] = 8.0
    f[hd // 4 - 2:hd // 4] = rng.uniform(1.5, 6.0, 2)
    return f


@pytest.mark.parametrize("mode", ["normal", "neox"])
@pytest.mark.parametrize("hd", [16, 64, 128])
def test_rope_freq_factors_match_reference(mode, hd, rng):
    x = rng.standard_normal((9, 3, hd)).astype(np.float32)
    pos = np.array([0, 1, 2, 15, 16, 100, 1000, 4095, 131071])
    f = _factors(hd, rng)
    for base, scale in [(500000.0, 1.0), (10000.0, 0.25)]:
        got = xsil.rope(x, pos, mode=mode, freq_base=base, freq_scale=scale, freq_factors=f)
        want = R.rope(x, pos, mode, base, scale, f)
        np.testing.assert_allclose(got, want, atol=3e-5 * np.abs(x).max())
        # and the factors matter
        assert np.abs(got - R.rope(x, pos, mode, base, scale)).max() > 0.1


def test_rope_freq_factors_divide_by_hand():
    # theta_i = pos * base^(-2i/d) / f_i for both pairings (ggml divides theta by its freq_factors)
    d, p = 8, 5
    x = np.arange(1, d + 1, dtype=np.float32)[None]
    f = np.array([1.0, 2.0, 4.0, 8.0], np.float32)
    th = p * 10000.0 ** (-2 * np.arange(d // 2) / d) / f
    for mode, (i0, i1) in (("normal", (lambda i: 2 * i, lambda i: 2 * i + 1)),
                           ("neox", (lambda i: i, lambda i: i + d // 2))):
        want = x[0].astype(np.float64).copy()
        for i in range(d // 2):
            a, b = x[0, i0(i)], x[0, i1(i)]
            want[i0(i)] = a * np.cos(th[i]) - b * np.sin(th[i])
            want[i1(i)] = a * np.sin(th[i]) + b * np.cos(th[i])
        np.testing.assert_allclose(xsil.rope(x, [p], mode=mode, freq_factors=f)[0], want, rtol=1e-5)


@pytest.mark.parametrize("mode", ["normal", "neox"])
def test_rope_all_ones_factors_equal_none_bit_exact(mode, rng):
    x = rng.standard_normal((6, 2, 64)).astype(np.float32)
    pos = np.array([0, 3, 77, 1000, 65535, 7])
    for base, scale in [(10000.0, 1.0), (500000.0, 0.5)]:
        a = xsil.rope(x, pos, mode=mode, freq_base=base, freq_scale=scale, freq_factors=np.ones(32))
        b = xsil.rope(x, pos, mode=mode, freq_base=base, freq_scale=scale)
        np.testing.assert_array_equal(a, b)


def test_rope_freq_factors_errors():
    x = np.ones((2, 8), np.float32)
    with pytest.raises(ValueError, match=r"\[rope\] rope frequency factors: 3 given, expected head_dim / 2 = 4"):
        xsil.rope(x, [0, 1], freq_factors=[1, 2, 3])
    for bad in ([1, 0, 1, 1], [1, -2, 1, 1], [1, np.nan, 1, 1], [1, np.inf, 1, 1], [1, 1e300, 1, 1]):
        with pytest.raises(ValueError, match=r"\[rope\] rope frequency factor 1 must be finite and > 0"):
            xsil.rope(x, [0, 1], freq_factors=bad)
    with pytest.raises(ValueError, match=r"\[rope\] rope frequency factors must be 1-D"):
        xsil.rope(x, [0, 1], freq_factors=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"\[rope\] rope frequency factors must be a 1-D array of numbers"):
        xsil.rope(x, [0, 1], freq_factors=["a", "b", "c", "d"])
