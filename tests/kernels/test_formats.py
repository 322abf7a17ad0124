"""Block formats: byte-for-byte against gguf-py's quantizers, value-for-value on dequantize."""

import numpy as np
import pytest

import xsil
from xsil.testing import reference as ref

gguf = pytest.importorskip("gguf")
GT = gguf.GGMLQuantizationType


def gguf_quant(x, fmt):
    return gguf.quants.quantize(x, getattr(GT, fmt))


def gguf_dequant(b, fmt):
    return gguf.quants.dequantize(b, getattr(GT, fmt))


def special_rows(cols, rng):
    """Rows that exercise the edge cases of the quantizers."""
    rows = [
        np.zeros(cols),                                   # all-zero blocks (d = 0)
        rng.standard_normal(cols),                        # ordinary
        rng.standard_normal(cols) * 1e-38,                # scales become fp16 subnormal / zero
        rng.standard_normal(cols) * 1e-6,                 # fp16 subnormal scales
        rng.standard_normal(cols) * 6e4,                  # near fp16 max
        np.where(np.arange(cols) % 32 == 5, 100.0, rng.standard_normal(cols) * 0.01),  # one outlier per block
        -np.abs(rng.standard_normal(cols)),               # all negative: max has negative sign
        np.abs(rng.standard_normal(cols)),                # all positive
        np.tile([1.0, -1.0], cols // 2),                  # ties on |max|: first occurrence wins
        np.round(rng.standard_normal(cols) * 8) / 8,      # values on the grid: rounding ties
        np.full(cols, 3.0),                               # constant blocks
    ]
    return np.stack(rows).astype(np.float32)


QUANT_FMTS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
K_QUANTS = ["Q4_K", "Q5_K", "Q6_K"]


@pytest.mark.parametrize("fmt", QUANT_FMTS)
@pytest.mark.parametrize("cols", [32, 96, 4096])
def test_quantize_bit_exact(fmt, cols, rng):
    x = np.concatenate([special_rows(cols, rng), rng.standard_normal((40, cols)).astype(np.float32)])
    got = xsil.quantize(x, fmt)
    want = gguf_quant(x, fmt)
    assert got.dtype == np.uint8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fmt", QUANT_FMTS)
def test_quantize_random_scales_bit_exact(fmt, rng):
    # Wide dynamic range per row exercises fp16 rounding of d across many exponents.
    scales = np.exp(rng.uniform(-30, 11, size=(300, 1))).astype(np.float32)
    x = (rng.standard_normal((300, 256)) * scales).astype(np.float32)
    np.testing.assert_array_equal(xsil.quantize(x, fmt), gguf_quant(x, fmt))


@pytest.mark.parametrize("fmt", QUANT_FMTS + K_QUANTS)
def test_dequantize_matches_gguf(fmt, rng):
    cols = 512
    if fmt in K_QUANTS:
        b = ref.random_blocks(fmt, 33, cols, rng)
    else:
        rows = np.concatenate([special_rows(cols, rng), rng.standard_normal((22, cols)).astype(np.float32)])
        b = gguf_quant(rows, fmt)
    got = xsil.dequantize(b, fmt, cols)
    want = gguf_dequant(b, fmt)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    # the independent NumPy reference agrees too
    np.testing.assert_array_equal(ref.dequantize(b, fmt, cols), want)


def test_q4_k_random_bytes_including_extreme_scales(rng):
    # Any byte pattern with finite fp16 d/dmin is a valid Q4_K block; include fp16 subnormal scales.
    b = rng.integers(0, 256, size=(64, 144), dtype=np.uint8)
    d = np.concatenate([np.full(32, 6e-8), rng.uniform(-2, 2, 32)]).astype(np.float16)
    b[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
    b[:, 2:4] = d[::-1].copy().view(np.uint8).reshape(-1, 2)
    np.testing.assert_array_equal(xsil.dequantize(b, "Q4_K", 256), gguf_dequant(b, "Q4_K"))


@pytest.mark.parametrize("fmt", ["Q4_1", "Q5_0", "Q5_1", "Q5_K", "Q6_K"])
def test_random_bytes_dequantize_matches_gguf(fmt, rng):
    """Any bytes with finite fp16 scales are a valid block: random quants, qh bits and (Q6_K) signed
    scales, with fp16 scales spanning subnormals to large values."""
    bs, ts = ref.BLOCK[fmt]
    n = 96
    b = rng.integers(0, 256, size=(n, ts), dtype=np.uint8)
    d = np.concatenate([np.full(16, 6e-8), rng.uniform(-2, 2, 64), rng.uniform(-6e4, 6e4, 16)]).astype(np.float16)
    if fmt == "Q6_K":
        b[:, 208:210] = d.view(np.uint8).reshape(-1, 2)
    else:
        b[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
        if fmt in ("Q4_1", "Q5_1", "Q5_K"):
            b[:, 2:4] = d[::-1].copy().view(np.uint8).reshape(-1, 2)
    want = gguf_dequant(b, fmt)
    np.testing.assert_array_equal(xsil.dequantize(b, fmt, bs), want)
    np.testing.assert_array_equal(xsil.dequantize(b.reshape(-1, 4 * ts), fmt, 4 * bs), want.reshape(-1, 4 * bs))
    np.testing.assert_array_equal(ref.dequantize(b, fmt, bs), want)


def test_dequantize_flat_input(rng):
    b = xsil.quantize(rng.standard_normal((4, 64)).astype(np.float32), "Q8_0")
    np.testing.assert_array_equal(xsil.dequantize(b.ravel(), "Q8_0", 64), xsil.dequantize(b, "Q8_0", 64))


def test_roundtrip_error_within_half_step(rng):
    x = rng.standard_normal((16, 256)).astype(np.float32)
    # Q8_0 is symmetric: half a step. Q4_0 maps the largest-magnitude value to -8, so the opposite
    # extreme clips at +7 and can lose a whole step.
    for fmt, levels, steps in (("Q4_0", 8, 1.0), ("Q8_0", 127, 0.5)):
        y = xsil.dequantize(xsil.quantize(x, fmt), fmt, 256)
        amax = np.abs(x.reshape(16, -1, 32)).max(axis=2, keepdims=True)
        step = amax / levels
        # plus the fp16 rounding of the scale (relative 2^-11 of each value)
        tol = steps * step + amax * 2.0**-10
        assert (np.abs((y - x).reshape(16, -1, 32)) <= tol).all()


@pytest.mark.parametrize(
    "fmt,bs,ts",
    [
        ("Q4_0", 32, 18),
        ("Q4_1", 32, 20),
        ("Q5_0", 32, 22),
        ("Q5_1", 32, 24),
        ("Q8_0", 32, 34),
        ("Q4_K", 256, 144),
        ("Q5_K", 256, 176),
        ("Q6_K", 256, 210),
    ],
)
def test_format_info(fmt, bs, ts):
    fi = xsil.format_info(fmt)
    assert (fi["block_size"], fi["type_size"], fi["name"]) == (bs, ts, fmt)
    assert fi["ggml_type"] == int(getattr(GT, fmt))


def test_quantize_threads_identical(rng):
    x = rng.standard_normal((300, 1024)).astype(np.float32)
    np.testing.assert_array_equal(xsil.quantize(x, "Q4_0", threads=1), xsil.quantize(x, "Q4_0", threads=2))
