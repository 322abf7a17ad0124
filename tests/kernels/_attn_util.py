"""Helpers shared by the attention tests: fill a cache, compare against the NumPy reference."""

import numpy as np

import xsil
from xsil.testing import attention_ref as R


def rand_kv(rng, T, n_kv, hd, outlier=False):
    k = rng.standard_normal((T, n_kv, hd)).astype(np.float32)
    v = rng.standard_normal((T, n_kv, hd)).astype(np.float32)
    return k, v


def assert_close(got, want, v_stored, k_dtype, v_dtype, q_scaled_l1=None, note="", max_frac=0.02):
    """Format-derived check.

    The kernel and the reference store the same rotated K and V, but the kernel rotates in float32
    and the reference in float64, so an element close to a rounding boundary of the storage format
    can land one quantum apart. Everything else is float32 accumulation. So: (1) all but a tiny
    fraction of outputs agree to float32 accumulation accuracy; (2) every output agrees within what
    one quantum flip of a K element (through the softmax) and of a V element can change.
    """
    got = np.asarray(got, np.float64)
    vmax = float(np.abs(v_stored).max()) + 1e-30
    acc_tol = 3e-5 * vmax + 1e-6
    err = np.abs(got - want)
    # One V quantum, plus one K quantum times |q| x scale moving the softmax (|dp| <= 2 ds).
    qv = {"f32": vmax * 2**-23, "f16": vmax * 2**-10, "q8_0": vmax / 127}[v_dtype]
    ks = {"f32": 2**-23, "f16": 2**-10, "q8_0": 1 / 127}[k_dtype]
    qk = 2 * (q_scaled_l1 if q_scaled_l1 is not None else 1.0) * ks * 4.0 * vmax
    flip_tol = acc_tol + qv + qk
    assert np.isfinite(got).all(), note
    frac = float((err > acc_tol).mean())
    assert frac <= max_frac or (k_dtype == "f32" and v_dtype == "f32" and frac == 0), (
        f"{note}: {frac:.3%} of outputs beyond float32 accuracy (max err {err.max():.3e}, tol {acc_tol:.3e})")
    assert err.max() <= flip_tol, f"{note}: max err {err.max():.3e} > {flip_tol:.3e}"


def fill(cache, seq, k, v, chunks=(1 << 30,)):
    """Append k, v [T, n_kv, hd] to a 1-layer cache in chunks."""
    T = k.shape[0]
    t = 0
    i = 0
    while t < T:
        n = min(chunks[i % len(chunks)], T - t)
        cache.append(seq, k[t:t + n], v[t:t + n])
        t += n
        i += 1


def expected(cache, q, k_raw, v_raw, q_pos, scale=None):
    mode, base, fs = cache.rope
    return R.cached_attention(q, k_raw, v_raw, cache.k_dtype, cache.v_dtype, q_pos, mode, base, fs, scale,
                              cache.rope_freq_factors)
