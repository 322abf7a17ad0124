"""Block-quantized kernels: GGUF Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / Q4_K / Q5_K / Q6_K
(de)quantization and matmul.

Every function checks shapes, dtypes and sizes before native code touches memory and raises
``ValueError`` whose message starts with the op name, e.g.
``[matmul] K=100 is not a multiple of the Q4_0 block size 32``.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import numpy as np

from . import _core

PackedWeights = _core.PackedWeights

#: Formats the kernels read.
FORMATS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
#: Formats :func:`quantize` writes (those gguf-py quantizes too; the K-quants are read-only).
QUANT_FORMATS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


def _threads(threads: Optional[int], op: str) -> Optional[int]:
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise ValueError(f"[{op}] threads must be an int >= 1 or None, got {threads!r}")
    return int(threads)


def _fmt(fmt: Any, op: str) -> str:
    if not isinstance(fmt, str):
        raise ValueError(f"[{op}] fmt must be a string such as 'Q4_0', got {fmt!r}")
    return fmt


def cpu_info() -> dict:
    """Features found on this CPU, the ISA tiers in this build (available or not, with the reason)
    and the tier in use: ``{"arch", "vendor", "features", "tiers", "available_tiers", "tier",
    "threads", "hardware_threads"}``."""
    return _core.cpu_info()


def set_isa(tier: str) -> None:
    """Select the default ISA tier (``"ref"``, ``"avx2"``, ``"avx512"``, ``"neon"``, ...; ``"auto"``
    for the best available). Raises ``ValueError`` if this CPU or build lacks it."""
    _core.set_isa(tier)


def set_num_threads(n: int) -> None:
    """Resize the persistent thread pool (total threads, caller included)."""
    t = _threads(n, "threads")
    if t is None:
        raise ValueError("[threads] n must be an int >= 1")
    _core.set_num_threads(t)


def get_num_threads() -> int:
    """Threads in the persistent pool."""
    return _core.get_num_threads()


def format_info(fmt: str) -> dict:
    """``{"name", "ggml_type", "block_size", "type_size"}`` for a block format."""
    return _core.format_info(_fmt(fmt, "format_info"))


def quantize(x: np.ndarray, fmt: str, *, threads: Optional[int] = None) -> np.ndarray:
    """Quantize float32 ``x[rows, cols]`` to GGUF rows.

    Returns uint8 ``[rows, cols / 32 * type_size]`` (18 bytes per 32 weights for Q4_0, 20 Q4_1, 22 Q5_0, 24 Q5_1, 34 Q8_0),
    byte-for-byte identical to ``gguf.quants.quantize``. ``cols`` must be a multiple of 32 and every
    value finite. A contiguous float32 input is read without a copy.
    """
    if not isinstance(x, np.ndarray):
        raise ValueError(f"[quantize] x must be a numpy array, got {type(x).__name__}")
    return _core.quantize(x, _fmt(fmt, "quantize"), _threads(threads, "quantize"))


def dequantize(blocks: np.ndarray, fmt: str, cols: int, *, threads: Optional[int] = None) -> np.ndarray:
    """Dequantize GGUF rows (uint8 ``[rows, row_bytes]`` or flat) of ``cols`` weights each to
    float32 ``[rows, cols]``, identical to ``gguf.quants.dequantize``. Every format in FORMATS."""
    if not isinstance(blocks, np.ndarray):
        raise ValueError(f"[dequantize] blocks must be a numpy array, got {type(blocks).__name__}")
    if isinstance(cols, bool) or not isinstance(cols, (int, np.integer)):
        raise ValueError(f"[dequantize] cols must be an int, got {cols!r}")
    return _core.dequantize(blocks, _fmt(fmt, "dequantize"), int(cols), _threads(threads, "dequantize"))


def matmul(
    x: np.ndarray,
    w_blocks: Union[np.ndarray, PackedWeights],
    fmt: str,
    *,
    threads: Optional[int] = None,
    isa: Optional[str] = None,
    exact: bool = False,
) -> np.ndarray:
    """``y[M, N] = x[M, K] . W[N, K]^T`` with W in a GGUF block format.

    ``x`` is float32 ``[M, K]`` (or ``[K]``, giving ``[N]``); ``w_blocks`` the GGUF rows of W, uint8
    ``[N, K / block_size * type_size]``, or :class:`PackedWeights` from :func:`pack`.

    The default path quantizes each activation row once to 8-bit blocks and uses integer dot
    products; ``exact=True`` dequantizes W to fp32 and accumulates in fp32 (slow, for checking).
    ``isa`` picks a tier for this call (default: the process default); ``threads`` caps the threads
    used (default: the pool size). Results for a tier do not depend on the thread count.
    """
    if not isinstance(x, np.ndarray):
        raise ValueError(f"[matmul] x must be a numpy array, got {type(x).__name__}")
    if isa is not None and not isinstance(isa, str):
        raise ValueError(f"[matmul] isa must be a tier name string, got {isa!r}")
    squeeze = x.ndim == 1
    if squeeze:
        x = x.reshape(1, -1)
    y = _core.matmul(x, w_blocks, _fmt(fmt, "matmul"), _threads(threads, "matmul"), isa or "", bool(exact))
    return y[0] if squeeze else y


def pack(
    w_blocks: np.ndarray,
    fmt: str,
    *,
    isa: Optional[str] = None,
    inplace: bool = False,
    threads: Optional[int] = None,
) -> Optional[PackedWeights]:
    """Repack GGUF rows once into the layout a tier's kernels read fastest.

    The packed copy has exactly the original's byte size and replaces it: with ``inplace=True`` the
    bytes of ``w_blocks`` (which must be writeable) are permuted in place and no second copy exists.
    Returns ``None`` when the tier reads GGUF rows directly (nothing to gain from packing).
    """
    if not isinstance(w_blocks, np.ndarray):
        raise ValueError(f"[pack] w_blocks must be a numpy array, got {type(w_blocks).__name__}")
    return _core.pack(w_blocks, _fmt(fmt, "pack"), isa or "", bool(inplace), _threads(threads, "pack"))


def _apply_env() -> None:
    tier = os.environ.get("XSIL_CPU_ISA", "").strip()
    if tier:
        try:
            _core.set_isa(tier)
        except ValueError as e:
            raise ValueError(
                f"XSIL_CPU_ISA={tier!r}: {e}. Unset XSIL_CPU_ISA or pick an available tier."
            ) from None


_apply_env()
