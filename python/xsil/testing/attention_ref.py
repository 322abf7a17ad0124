"""NumPy reference for RoPE, KV storage rounding and attention.

Written from the conventions (ggml RoPE modes, GGUF Q8_0, softmax attention), independently of the
C++ kernels. Everything is float64 unless a storage format says otherwise.
"""

from __future__ import annotations

import numpy as np

KV_DTYPES = ("f32", "f16", "q8_0")


def rope(x: np.ndarray, positions: np.ndarray, mode: str = "normal", base: float = 10000.0,
         scale: float = 1.0, factors=None) -> np.ndarray:
    """Rotate ``x[n, ..., d]`` at ``positions[n]``; pair i turns by pos * scale * base^(-2i/d) /
    factors[i] (``factors``: optional per-pair frequency factors [d/2], GGUF rope_freqs.weight).

    ``normal`` (ggml mode 0, GGUF Llama): pairs (x[2i], x[2i+1]). ``neox`` (mode 2, Qwen2):
    pairs (x[i], x[i + d/2]). ``none``: identity.
    """
    x = np.asarray(x, dtype=np.float64)
    if mode == "none":
        return x.copy()
    d = x.shape[-1]
    i = np.arange(d // 2, dtype=np.float64)
    inv = base ** (-2.0 * i / d)
    if factors is not None:
        inv = inv / np.asarray(factors, np.float64).reshape(d // 2)
    theta = (np.asarray(positions, np.float64) * scale)[:, None] * inv  # [n, d/2]
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (d // 2,)
    c, s = np.cos(theta).reshape(shape), np.sin(theta).reshape(shape)
    if mode == "normal":
        a, b = x[..., 0::2], x[..., 1::2]
    elif mode == "neox":
        a, b = x[..., : d // 2], x[..., d // 2:]
    else:
        raise ValueError(mode)
    ra, rb = a * c - b * s, a * s + b * c
    out = np.empty_like(x)
    if mode == "normal":
        out[..., 0::2], out[..., 1::2] = ra, rb
    else:
        out[..., : d // 2], out[..., d // 2:] = ra, rb
    return out


def store(x: np.ndarray, dtype: str) -> np.ndarray:
    """The values a cache of ``dtype`` holds for fp32 ``x`` (last axis = head_dim), as float64."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "f32":
        return x.astype(np.float64)
    if dtype == "f16":
        return x.astype(np.float16).astype(np.float64)
    if dtype == "q8_0":
        b = x.reshape(-1, 32).astype(np.float64)
        amax = np.abs(b).max(axis=1, keepdims=True)
        d = amax / 127.0
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(d > 0, np.round(b / np.where(d > 0, d, 1.0)), 0.0)
        d16 = d.astype(np.float16).astype(np.float64)
        return (q * d16).reshape(x.shape)
    raise ValueError(dtype)


def quantum(x: np.ndarray, dtype: str) -> np.ndarray:
    """Size of one rounding step of ``dtype`` at each element of ``x`` (for error bounds)."""
    x = np.asarray(x, dtype=np.float64)
    if dtype == "f32":
        return np.abs(x) * 2.0**-23
    if dtype == "f16":
        return np.maximum(np.abs(x), 2.0**-14) * 2.0**-10
    if dtype == "q8_0":
        b = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True) / 127.0 * (1 + 2.0**-10)
        return np.broadcast_to(b, x.reshape(-1, 32).shape).reshape(x.shape)
    raise ValueError(dtype)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Causal softmax attention. q[nq, H, d] at positions q_pos[nq]; k, v[T, Hkv, d] at positions 0..T-1.
    GQA: head h reads KV head h // (H // Hkv). Returns float64 [nq, H, d]."""
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    v = np.asarray(v, np.float64)
    nq, H, d = q.shape
    T, Hkv, _ = k.shape
    r = H // Hkv
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    kk = np.repeat(k, r, axis=1)  # [T, H, d]
    vv = np.repeat(v, r, axis=1)
    s = np.einsum("qhd,thd->hqt", q, kk) * scale
    mask = np.arange(T)[None, :] > np.asarray(q_pos)[:, None]  # [nq, T]
    s = np.where(mask[None], -np.inf, s)
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("hqt,thd->qhd", p, vv)


def cached_attention(q, k_raw, v_raw, k_dtype, v_dtype, q_pos, rope_mode="normal", base=10000.0, scale_f=1.0,
                     scale=None, factors=None):
    """What a cache returns: keys k_raw[T, Hkv, d] rotated at positions 0..T-1 and stored in k_dtype,
    values stored in v_dtype, queries rotated at q_pos; causal attention."""
    T = k_raw.shape[0]
    kr = rope(k_raw, np.arange(T), rope_mode, base, scale_f, factors).astype(np.float32)
    ks = store(kr, k_dtype)
    vs = store(v_raw, v_dtype)
    qr = rope(q, np.asarray(q_pos), rope_mode, base, scale_f, factors).astype(np.float32)
    return attention(qr, ks, vs, q_pos, scale)
