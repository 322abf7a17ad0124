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
