"""NumPy reference for the block formats and the matmul kernels.

Written from the GGUF format description, independently of the C++ kernels, so the two can check
each other. Everything here is vectorized NumPy; matmuls accumulate in float64.
"""

from __future__ import annotations

import numpy as np

BLOCK = {
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q8_0": (32, 34),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
}
K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")


def row_bytes(fmt: str, cols: int) -> int:
    bs, ts = BLOCK[fmt]
    return cols // bs * ts


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def q4_k_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unpack [n, 12] uint8 into 6-bit (scale, min) pairs, each [n, 8]."""
    s = scales.astype(np.uint8)
    sc = np.empty((s.shape[0], 8), np.uint8)
    mn = np.empty((s.shape[0], 8), np.uint8)
    sc[:, :4] = s[:, 0:4] & 63
    mn[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, mn


def _q5_quants(b: np.ndarray, qh_off: int) -> np.ndarray:
    """[n, 32] quants 0..31 of Q5_0 / Q5_1 blocks (qh: 4 bytes at qh_off, qs right after)."""
    qs = b[..., qh_off + 4 : qh_off + 20]
    lo = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    hbits = np.unpackbits(b[..., qh_off : qh_off + 4], axis=-1, bitorder="little")  # [..., 32]
    return lo | (hbits << 4)


def _q5_k_quants(b: np.ndarray) -> np.ndarray:
    """[..., 8, 32] quants 0..31 of Q5_K blocks [..., 176]."""
    qs = b[..., 48:].reshape(b.shape[:-1] + (4, 32))
    lo = np.stack([qs & 0x0F, qs >> 4], axis=-2).reshape(b.shape[:-1] + (8, 32))
    qh = b[..., 16:48]  # [..., 32]
    hb = (qh[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1  # [..., 8, 32]
    return lo | (hb << 4)


def _q6_k_quants(b: np.ndarray) -> np.ndarray:
    """[..., 256] quants 0..63 of Q6_K blocks [..., 210]."""
    ql = b[..., 0:128].reshape(b.shape[:-1] + (2, 2, 32))  # [half, s & 1, l]
    qh = b[..., 128:192].reshape(b.shape[:-1] + (2, 32))  # [half, l]
    out = np.empty(b.shape[:-1] + (2, 4, 32), np.uint8)
    for s in range(4):
        lo = (ql[..., s & 1, :] >> (4 * (s >> 1))) & 0x0F
        hi = (qh >> (2 * s)) & 0x03
        out[..., s, :] = lo | (hi << 4)
    return out.reshape(b.shape[:-1] + (256,))


def dequantize(blocks: np.ndarray, fmt: str, cols: int) -> np.ndarray:
    """GGUF rows -> float32 [rows, cols], with the float32 operation order of ggml."""
    bs, ts = BLOCK[fmt]
    b = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(-1, ts)
    rows = b.shape[0] * bs // cols
    if fmt == "Q4_0":
        d = _f16(b[:, 0:2])
        qs = b[:, 2:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - np.float32(8)
        out = d * q
    elif fmt == "Q8_0":
        d = _f16(b[:, 0:2])
        q = b[:, 2:].view(np.int8).astype(np.float32)
        out = q * d
    elif fmt == "Q4_K":
        d = _f16(b[:, 0:2])
        dmin = _f16(b[:, 2:4])
        sc, mn = q4_k_scales(b[:, 4:16])
        qs = b[:, 16:].reshape(-1, 4, 32)
        q = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 8, 32).astype(np.float32)
        dl = (d * sc.astype(np.float32))[:, :, None]
        ml = (dmin * mn.astype(np.float32))[:, :, None]
        out = (dl * q - ml).reshape(-1, 256)
    elif fmt in ("Q4_1", "Q5_1"):
        d = _f16(b[:, 0:2])
        m = _f16(b[:, 2:4])
        if fmt == "Q4_1":
            qs = b[:, 4:]
            q = np.concatenate([qs & 0x0F, qs >> 4], axis=1)
        else:
            q = _q5_quants(b, 4)
        out = d * q.astype(np.float32) + m
    elif fmt == "Q5_0":
        d = _f16(b[:, 0:2])
        out = d * (_q5_quants(b, 2).astype(np.float32) - np.float32(16))
    elif fmt == "Q5_K":
        d = _f16(b[:, 0:2])
        dmin = _f16(b[:, 2:4])
        sc, mn = q4_k_scales(b[:, 4:16])
        q = _q5_k_quants(b).astype(np.float32)
        dl = (d * sc.astype(np.float32))[:, :, None]
        ml = (dmin * mn.astype(np.float32))[:, :, None]
        out = (dl * q - ml).reshape(-1, 256)
    elif fmt == "Q6_K":
        d = _f16(b[:, 208:210])
        sc = b[:, 192:208].view(np.int8).astype(np.float32)  # [n, 16]
        q = _q6_k_quants(b).reshape(-1, 16, 16).astype(np.float32) - np.float32(32)
        out = ((d * sc)[:, :, None] * q).reshape(-1, 256)
    else:
        raise ValueError(fmt)
    return out.astype(np.float32).reshape(rows, cols)


def quantize_activations(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """The fast path's activation quantization: per `group` values, d = amax / 127 (float32),
    q = round-half-even(x * (1 / d)). Returns (q int8 [M, K], d float32 [M, K / group])."""
    x = np.asarray(x, np.float32)
    M, K = x.shape
    xb = x.reshape(M, K // group, group)
    amax = np.abs(xb).max(axis=2)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = np.rint(xb * inv[:, :, None]).astype(np.int8)
    return q.reshape(M, K), d


def _weight_ints(blocks: np.ndarray, fmt: str, N: int, K: int):
    bs, ts = BLOCK[fmt]
    b = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(N, K // bs, ts)
    return b


def matmul_int8(x: np.ndarray, blocks: np.ndarray, fmt: str) -> np.ndarray:
    """What the integer fast path computes, exactly (float64): activations quantized per block,
    integer block dot products, scales applied per block pair."""
    x = np.asarray(x, np.float32)
    M, K = x.shape
    N = blocks.shape[0] if blocks.ndim == 2 else blocks.size // row_bytes(fmt, K)
    b = _weight_ints(blocks, fmt, N, K)
    if fmt not in K_QUANTS:
        qx, dx = quantize_activations(x, 32)
        nb = K // 32
        dw = b[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float64)  # [N, nb]
        mw = None
        if fmt == "Q4_0":
            qs = b[:, :, 2:]
            qw = np.concatenate([qs & 0x0F, qs >> 4], axis=2).astype(np.int64) - 8
        elif fmt == "Q8_0":
            qw = b[:, :, 2:].view(np.int8).astype(np.int64)
        elif fmt == "Q5_0":
            qw = _q5_quants(b, 2).astype(np.int64) - 16
        else:  # Q4_1 / Q5_1: w = d q + m
            mw = b[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
            if fmt == "Q4_1":
                qs = b[:, :, 4:]
                qw = np.concatenate([qs & 0x0F, qs >> 4], axis=2).astype(np.int64)
            else:
                qw = _q5_quants(b, 4).astype(np.int64)
        qxb = qx.reshape(M, nb, 32).astype(np.int64)
        isum = np.einsum("mbk,nbk->mnb", qxb, qw)  # [M, N, nb] exact ints
        scale = dx.astype(np.float64)[:, None, :] * dw[None, :, :]
        out = isum * scale
        if mw is not None:  # m * d_x * sum(qx)
            out = out + mw[None, :, :] * (dx.astype(np.float64) * qxb.sum(axis=2))[:, None, :]
        return out.sum(axis=2)
    if fmt == "Q6_K":
        qx, dx = quantize_activations(x, 256)
        nb = K // 256
        d = b[:, :, 208:210].copy().view(np.float16)[..., 0].astype(np.float64)  # [N, nb]
        sc = b[:, :, 192:208].copy().view(np.int8).astype(np.int64)  # [N, nb, 16]
        qw = _q6_k_quants(b).reshape(N, nb, 16, 16).astype(np.int64) - 32
        qxb = qx.reshape(M, nb, 16, 16).astype(np.int64)
        isum = (np.einsum("mbjk,nbjk->mnbj", qxb, qw) * sc[None]).sum(axis=3)  # [M, N, nb]
        return (dx.astype(np.float64)[:, None, :] * d[None] * isum).sum(axis=2)
    # Q4_K / Q5_K
    qx, dx = quantize_activations(x, 256)
    nb = K // 256
    d = b[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float64)
    dmin = b[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
    sc, mn = q4_k_scales(b[:, :, 4:16].reshape(-1, 12))
    sc = sc.reshape(N, nb, 8).astype(np.int64)
    mn = mn.reshape(N, nb, 8).astype(np.int64)
    if fmt == "Q5_K":
        qw = _q5_k_quants(b).astype(np.int64)
    else:
        qs = b[:, :, 16:].reshape(N, nb, 4, 32)
        qw = np.stack([qs & 0x0F, qs >> 4], axis=3).reshape(N, nb, 8, 32).astype(np.int64)
    qxb = qx.reshape(M, nb, 8, 32).astype(np.int64)
    isum = np.einsum("mbjk,nbjk->mnbj", qxb, qw)  # [M, N, nb, 8]
    xsum = qxb.sum(axis=3)  # [M, nb, 8]
    s_sc = (isum * sc[None]).sum(axis=3)  # [M, N, nb]
    s_m = np.einsum("mbj,nbj->mnb", xsum, mn)
    dxx = dx.astype(np.float64)[:, None, :]
    return (dxx * d[None] * s_sc - dxx * dmin[None] * s_m).sum(axis=2)


def matmul_exact(x: np.ndarray, blocks: np.ndarray, fmt: str) -> np.ndarray:
    """x . dequantize(W)^T in float64: what exact=True approximates in float32."""
    x = np.asarray(x, np.float32)
    K = x.shape[1]
    w = dequantize(blocks, fmt, K)
    return x.astype(np.float64) @ w.astype(np.float64).T


def int8_error_bound(x: np.ndarray, blocks: np.ndarray, fmt: str) -> np.ndarray:
    """Rigorous bound on |matmul_int8 - matmul_exact| per output: each activation moves by at most
    half its block's step d, so |sum_k w_k (x_k - x^_k)| <= sum_blocks d/2 * sum_{k in block} |w_k|."""
    x = np.asarray(x, np.float32)
    K = x.shape[1]
    group = 256 if fmt in K_QUANTS else 32
    _, dx = quantize_activations(x, group)
    w = np.abs(dequantize(blocks, fmt, K).astype(np.float64))
    wsum = w.reshape(w.shape[0], K // group, group).sum(axis=2)  # [N, nb]
    return (dx.astype(np.float64) / 2) @ wsum.T


def random_blocks(
    fmt: str, rows: int, cols: int, rng: np.random.Generator, scale: float = 0.02
) -> np.ndarray:
    """Valid random GGUF rows of a format (gguf-py has no K-quant quantizer): random quants and
    6-bit scales, fp16 super-scales around `scale`. uint8 [rows, row_bytes]."""
    bs, ts = BLOCK[fmt]
    nb = rows * cols // bs
    b = rng.integers(0, 256, size=(nb, ts), dtype=np.uint8)
    if fmt == "Q6_K":
        # int8 sub-block scales (any value is valid) times (q - 32) in [-32, 31]
        d = (rng.uniform(0.5, 1.5, nb) * scale / 1000).astype(np.float16)
        b[:, 208:210] = d.view(np.uint8).reshape(nb, 2)
    elif fmt == "Q5_K":
        # sc * q averages ~480 and m ~31.5
        d = (rng.uniform(0.5, 1.5, nb) * scale / 240).astype(np.float16)
        dmin = (rng.uniform(0.5, 1.5, nb) * scale / 16).astype(np.float16)
        b[:, 0:2] = d.view(np.uint8).reshape(nb, 2)
        b[:, 2:4] = dmin.view(np.uint8).reshape(nb, 2)
    elif fmt in ("Q4_1", "Q5_1"):
        levels = 15 if fmt == "Q4_1" else 31
        d = (rng.uniform(0.5, 1.5, nb) * scale / levels * 2).astype(np.float16)
        m = (-rng.uniform(0.5, 1.5, nb) * scale).astype(np.float16)
        b[:, 0:2] = d.view(np.uint8).reshape(nb, 2)
        b[:, 2:4] = m.view(np.uint8).reshape(nb, 2)
    elif fmt == "Q5_0":
        d = (rng.uniform(0.5, 1.5, nb) * scale / 16).astype(np.float16)
        b[:, 0:2] = d.view(np.uint8).reshape(nb, 2)
    elif fmt == "Q4_K":
        # sc * q averages ~236 and m ~31.5: weights land within a few `scale` of zero
        d = (rng.uniform(0.5, 1.5, nb) * scale / 120).astype(np.float16)
        dmin = (rng.uniform(0.5, 1.5, nb) * scale / 16).astype(np.float16)
        b[:, 0:2] = d.view(np.uint8).reshape(nb, 2)
        b[:, 2:4] = dmin.view(np.uint8).reshape(nb, 2)
    else:
        d = (rng.uniform(0.5, 1.5, nb) * scale / 8).astype(np.float16)
        b[:, 0:2] = d.view(np.uint8).reshape(nb, 2)
    return b.reshape(rows, cols // bs * ts)


def _k_min_max(x: np.ndarray, levels: int):
    """Min/max quantization of 32-element sub-blocks with 6-bit scales and mins relative to fp16
    super-block scales (Q4_K: levels 15, Q5_K: 31). Returns (d, dmin fp16 [nb], sc, m uint8 [nb, 8],
    q uint8 [nb, 8, 32], packed 12 scale bytes [nb, 12])."""
    xb = x.reshape(-1, 8, 32).astype(np.float64)
    mn = np.minimum(xb.min(axis=2), 0.0)            # [nb, 8] sub-block minimum (<= 0)
    mx = xb.max(axis=2)
    scale = np.maximum(mx - mn, 1e-30) / levels     # [nb, 8]
    d = (scale.max(axis=1) / 63.0).astype(np.float16).astype(np.float64)      # [nb]
    dmin = ((-mn).max(axis=1) / 63.0).astype(np.float16).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.rint(scale / d[:, None]), 0).clip(0, 63).astype(np.uint8)
        m = np.where(dmin[:, None] > 0, np.rint(-mn / dmin[:, None]), 0).clip(0, 63).astype(np.uint8)
        step = d[:, None] * sc                       # [nb, 8]
        off = dmin[:, None] * m
        q = np.where(step[:, :, None] > 0, np.rint((xb + off[:, :, None]) / step[:, :, None]), 0)
    q = q.clip(0, levels).astype(np.uint8)          # [nb, 8, 32]
    nb = xb.shape[0]
    s = np.zeros((nb, 12), np.uint8)
    s[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    s[:, 4:8] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((m[:, 4:8] & 0x0F) << 4)
    return d.astype(np.float16), dmin.astype(np.float16), q, s


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """A simple Q4_K quantizer (min/max per 32-element sub-block, 6-bit scales and mins relative to
    fp16 super-block scales). Not llama.cpp's error-minimizing search, but it makes realistic,
    valid Q4_K rows from real-valued weights (gguf-py has no Q4_K quantizer). float32 [rows, cols]
    (cols % 256 == 0) -> uint8 [rows, cols / 256 * 144]."""
    x = np.asarray(x, np.float32)
    rows, cols = x.shape
    d, dmin, q, s = _k_min_max(x, 15)
    nb = q.shape[0]
    out = np.zeros((nb, 144), np.uint8)
    out[:, 0:2] = d.view(np.uint8).reshape(nb, 2)
    out[:, 2:4] = dmin.view(np.uint8).reshape(nb, 2)
    out[:, 4:16] = s
    qq = q.reshape(nb, 4, 2, 32)
    out[:, 16:] = (qq[:, :, 0, :] | (qq[:, :, 1, :] << 4)).reshape(nb, 128)
    return out.reshape(rows, cols // 256 * 144)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """Q5_K by the same simple min/max scheme as quantize_q4_k (31 levels). float32 [rows, cols]
    (cols % 256 == 0) -> uint8 [rows, cols / 256 * 176]."""
    x = np.asarray(x, np.float32)
    rows, cols = x.shape
    d, dmin, q, s = _k_min_max(x, 31)
    nb = q.shape[0]
    out = np.zeros((nb, 176), np.uint8)
    out[:, 0:2] = d.view(np.uint8).reshape(nb, 2)
    out[:, 2:4] = dmin.view(np.uint8).reshape(nb, 2)
    out[:, 4:16] = s
    out[:, 16:48] = ((q >> 4) << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1).astype(np.uint8)
    lo = (q & 0x0F).reshape(nb, 4, 2, 32)
    out[:, 48:] = (lo[:, :, 0, :] | (lo[:, :, 1, :] << 4)).reshape(nb, 128)
    return out.reshape(rows, cols // 256 * 176)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """A simple Q6_K quantizer (symmetric absmax per 16-element sub-block, int8 sub-block scales
    relative to an fp16 super-block scale; gguf-py has no Q6_K quantizer). float32 [rows, cols]
    (cols % 256 == 0) -> uint8 [rows, cols / 256 * 210]."""
    x = np.asarray(x, np.float32)
    rows, cols = x.shape
    xb = x.reshape(-1, 16, 16).astype(np.float64)
    nb = xb.shape[0]
    scale = np.abs(xb).max(axis=2) / 31.5           # [nb, 16]: q - 32 in [-32, 31]
    d = (scale.max(axis=1) / 127.0).astype(np.float16).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.rint(scale / d[:, None]), 0).clip(-128, 127)
        step = d[:, None] * sc
        q = np.where(step[:, :, None] != 0, np.rint(xb / step[:, :, None]), 0)
    q = (q.clip(-32, 31) + 32).astype(np.uint8).reshape(nb, 2, 4, 32)  # [half, s, l]
    out = np.zeros((nb, 210), np.uint8)
    ql = np.zeros((nb, 2, 2, 32), np.uint8)
    qh = np.zeros((nb, 2, 32), np.uint8)
    for s_ in range(4):
        ql[:, :, s_ & 1, :] |= (q[:, :, s_, :] & 0x0F) << (4 * (s_ >> 1))
        qh |= (q[:, :, s_, :] >> 4) << (2 * s_)
    out[:, 0:128] = ql.reshape(nb, 128)
    out[:, 128:192] = qh.reshape(nb, 64)
    out[:, 192:208] = sc.astype(np.int8).view(np.uint8)
    out[:, 208:210] = d.astype(np.float16).view(np.uint8).reshape(nb, 2)
    return out.reshape(rows, cols // 256 * 210)
