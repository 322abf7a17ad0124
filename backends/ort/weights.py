"""GGUF weight blocks -> ONNX Runtime weight layouts, without requantising where the formats agree.

Every converter takes GGUF rows (uint8 ``[rows, row_bytes]``, a zero-copy view of the mapping) and
returns NumPy arrays for a row range, so a large tensor is converted and written in slices.

* Q4_0 -> ``MatMulNBits`` bits=4, block 32: a nibble reshuffle plus an fp32 scale per block; the
  default zero point 8 is Q4_0's ``d*(q-8)``. Exact.
* Q8_0 -> ``MatMulNBits`` bits=8, block 32: ``q + 128`` as uint8 with the default zero point 128.
  Exact.
* Q4_K -> ``MatMulNBits`` bits=4, block 32 with *float* zero points: a Q4_K sub-block is
  ``d*sc*q - dmin*m``, i.e. ``(q - dmin*m/(d*sc)) * d*sc``; exact up to fp32 rounding of the zero
  point. A sub-block with ``sc == 0`` is the constant ``-dmin*m``: stored as q=0, scale 1,
  zero point ``dmin*m`` (also exact).
* F16 / F32 -> plain fp32 MatMul weights ``[K, N]``.

Layouts (ORT contrib-op docs): ``MatMulNBits`` B is ``uint8 [N, K/block, block*bits/8]`` packed
along K, low nibble first; scales ``[N, K/block]`` (type of A); unpacked zero points ``[N,
K/block]`` (type of A). ``GatherBlockQuantized`` with uint8 data takes the same packing as
``[rows, K*bits/8]``.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

QK = 32  # GGUF Q4_0 / Q8_0 block, and the MatMulNBits block we emit
BLOCK_BYTES = {"Q4_0": 18, "Q8_0": 34, "Q4_K": 144}
ELEMS = {"Q4_0": 32, "Q8_0": 32, "Q4_K": 256}


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def q4_0_to_nbits(rows: np.ndarray, K: int) -> Tuple[np.ndarray, np.ndarray]:
    """Q4_0 rows -> (B uint8 [n, K/32, 16], scales fp32 [n, K/32])."""
    n = rows.shape[0]
    b = np.ascontiguousarray(rows).reshape(n, K // QK, 18)
    d = _f16(b[:, :, 0:2]).reshape(n, K // QK)
    qs = b[:, :, 2:]
    # GGUF: byte j = element j (low) | element j+16 (high); MatMulNBits: byte m = 2m (low) | 2m+1 (high)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2)  # [n, nb, 32] elements in order
    packed = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).astype(np.uint8)
    return packed, d


def q8_0_to_nbits(rows: np.ndarray, K: int) -> Tuple[np.ndarray, np.ndarray]:
    """Q8_0 rows -> (B uint8 [n, K/32, 32] = q+128, scales fp32 [n, K/32])."""
    n = rows.shape[0]
    b = np.ascontiguousarray(rows).reshape(n, K // QK, 34)
    d = _f16(b[:, :, 0:2]).reshape(n, K // QK)
    q = (b[:, :, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return q, d


def _q4_k_scales(s: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    sc = np.empty(s.shape[:-1] + (8,), np.uint8)
    mn = np.empty(s.shape[:-1] + (8,), np.uint8)
    sc[..., :4] = s[..., 0:4] & 63
    mn[..., :4] = s[..., 4:8] & 63
    sc[..., 4:] = (s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4)
    mn[..., 4:] = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return sc, mn


def q4_k_to_nbits(rows: np.ndarray, K: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_K rows -> (B uint8 [n, K/32, 16], scales fp32 [n, K/32], zero points fp32 [n, K/32])."""
    n = rows.shape[0]
    nsb = K // 256
    b = np.ascontiguousarray(rows).reshape(n, nsb, 144)
    d = _f16(b[:, :, 0:2])  # [n, nsb, 1]
    dmin = _f16(b[:, :, 2:4])
    sc, mn = _q4_k_scales(b[:, :, 4:16])  # [n, nsb, 8]
    qs = b[:, :, 16:].reshape(n, nsb, 4, 32)
    # sub-block 2g = low nibbles of group g, 2g+1 = high nibbles
    q = np.stack([qs & 0x0F, qs >> 4], axis=3).reshape(n, nsb * 8, 32)  # [n, nsb, 4, 2, 32] -> sub-blocks
    scale = (d * sc.astype(np.float32)).reshape(n, nsb * 8)
    offs = (dmin * mn.astype(np.float32)).reshape(n, nsb * 8)  # value = scale*q - offs
    zero = scale == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        zp = np.where(zero, offs, offs / np.where(zero, 1, scale)).astype(np.float32)
    if zero.any():
        q = q.copy()
        q[zero] = 0
        scale = np.where(zero, np.float32(1), scale).astype(np.float32)
    packed = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).astype(np.uint8)
    return packed, scale.astype(np.float32), zp


def dequant_rows(rows: np.ndarray, fmt: str, K: int) -> np.ndarray:
    """Any supported format -> fp32 [n, K] (used for norms, F16/F32 matrices, non-Q4_0 embeddings)."""
    if fmt == "F32":
        return np.asarray(rows, np.float32).reshape(-1, K)
    if fmt == "F16":
        return np.asarray(rows, np.float32).reshape(-1, K)
    n = rows.shape[0]
    if fmt == "Q4_0":
        p, s = q4_0_to_nbits(rows, K)
        q = np.stack([p & 0x0F, p >> 4], axis=3).reshape(n, K // QK, QK).astype(np.float32) - 8
        return (q * s[:, :, None]).reshape(n, K)
    if fmt == "Q8_0":
        p, s = q8_0_to_nbits(rows, K)
        return ((p.astype(np.float32) - 128) * s[:, :, None]).reshape(n, K)
    if fmt == "Q4_K":
        p, s, z = q4_k_to_nbits(rows, K)
        q = np.stack([p & 0x0F, p >> 4], axis=3).reshape(n, K // QK, QK).astype(np.float32)
        return ((q - z[:, :, None]) * s[:, :, None]).reshape(n, K)
    raise ValueError(f"[ort] weight format {fmt} is not supported")


def nbits_rows(rows: np.ndarray, fmt: str, K: int) -> Dict[str, np.ndarray]:
    """GGUF rows -> the MatMulNBits inputs for those output rows: {"B", "scales"[, "zero_points"]}."""
    if fmt == "Q4_0":
        p, s = q4_0_to_nbits(rows, K)
        return {"B": p, "scales": s}
    if fmt == "Q8_0":
        p, s = q8_0_to_nbits(rows, K)
        return {"B": p, "scales": s}
    if fmt == "Q4_K":
        p, s, z = q4_k_to_nbits(rows, K)
        return {"B": p, "scales": s, "zero_points": z}
    raise ValueError(f"[ort] {fmt} has no MatMulNBits form")


NBITS = {"Q4_0": 4, "Q8_0": 8, "Q4_K": 4}
