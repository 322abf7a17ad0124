"""Paged KV cache and attention kernels (decode, causal prefill) with RoPE.

The cache is native (C++): one pool of fixed-size pages allocated at creation from an explicit
budget, never grown. A page holds ``page_size`` tokens of one sequence for all layers. Sequences
share the pool; ``fork`` shares pages copy-on-write. K is stored already rotated (RoPE) at its
position; queries are rotated by the attention calls. Storage: ``f32``, ``f16`` or ``q8_0`` (GGUF
Q8_0 blocks of 32, head_dim must be a multiple of 32) for K and V independently.

Every call validates ids, positions, head counts and shapes before native code touches memory and
raises ``ValueError`` whose message starts with the op, e.g.
``[kv_cache] budget of 4096 tokens exhausted: 3 sequences hold 4096 ...``.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core

KV_DTYPES = ("f32", "f16", "q8_0")
ROPE_MODES = ("normal", "neox", "none")


def _int(x, name: str, op: str) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise ValueError(f"[{op}] {name} must be an int, got {x!r}")
    return int(x)


def _threads(threads, op: str):
    if threads is None:
        return None
    return _int(threads, "threads", op)


class KVCache(_core.KVCache):
    """Paged, budgeted KV cache for ``n_layers`` layers of ``n_kv_heads x head_dim`` K and V.

    Args:
        n_layers, n_kv_heads, head_dim: model shape (head_dim even; a multiple of 32 for q8_0).
        page_size: tokens per page (default 16).
        k_dtype, v_dtype: ``"f32"``, ``"f16"`` (default) or ``"q8_0"``.
        budget_bytes / budget_tokens: the pool size (exactly one is needed; rounded down to whole
            pages). The pool is allocated once; the cache never allocates more.
        n_ctx: per-sequence token limit (default: the whole budget).
        context_shift: ``"error"`` (default) raises when a sequence would pass n_ctx or the pool is
            full; ``"shift"`` drops the oldest tokens after the first ``n_keep`` (half of the
            droppable ones, or more if needed, as llama.cpp does) and re-rotates the kept keys to
            their new positions.
        rope: ``"normal"`` (adjacent pairs, GGUF Llama), ``"neox"`` (split halves, Qwen2) or ``"none"``.
        rope_freq_base, rope_freq_scale: theta_i = pos * freq_scale * freq_base^(-2i/head_dim).
        rope_freq_factors: optional per-pair frequency factors (``head_dim / 2`` finite values > 0,
            GGUF ``rope_freqs.weight`` of Llama 3.1/3.2): theta_i is divided by factor i. The cache
            keeps its own float32 copy (``rope_freq_factors`` property).

    Sequence ops: ``add_sequence() -> id``, ``remove_sequence(id)``, ``fork(id) -> id``,
    ``truncate(id, length)``, ``reserve(id, n) -> pos0`` then ``write(layer, id, pos0, k, v)`` per
    layer (the model's path), or ``append(id, k, v) -> pos0`` for all layers at once,
    ``shift(id, n_discard)``, ``read(layer, id) -> (K, V)`` (stored values as float32, K rotated).
    Accounting: ``stats()``, ``check()`` ("" when refcounts, free list and page tables agree),
    ``sequences``, ``length(id)``, ``page_table(id)``, ``refcount(page)``, ``bytes_per_token``,
    ``budget_tokens``.
    """

    def __init__(
        self,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        *,
        page_size: int = 16,
        k_dtype: str = "f16",
        v_dtype: str = "f16",
        budget_bytes: Optional[int] = None,
        budget_tokens: Optional[int] = None,
        n_ctx: Optional[int] = None,
        context_shift: str = "error",
        n_keep: int = 0,
        rope: str = "normal",
        rope_freq_base: float = 10000.0,
        rope_freq_scale: float = 1.0,
        rope_freq_factors: Optional[np.ndarray] = None,
    ) -> None:
        op = "kv_cache"
        if (budget_bytes is None) == (budget_tokens is None):
            raise ValueError("[kv_cache] give exactly one of budget_bytes or budget_tokens")
        for name, val in (("k_dtype", k_dtype), ("v_dtype", v_dtype), ("rope", rope), ("context_shift", context_shift)):
            if not isinstance(val, str):
                raise ValueError(f"[kv_cache] {name} must be a string, got {val!r}")
        super().__init__(
            _int(n_layers, "n_layers", op), _int(n_kv_heads, "n_kv_heads", op), _int(head_dim, "head_dim", op),
            _int(page_size, "page_size", op), k_dtype, v_dtype,
            0 if budget_bytes is None else _int(budget_bytes, "budget_bytes", op),
            0 if budget_tokens is None else _int(budget_tokens, "budget_tokens", op),
            0 if n_ctx is None else _int(n_ctx, "n_ctx", op), context_shift, _int(n_keep, "n_keep", op), rope,
            float(rope_freq_base), float(rope_freq_scale), _factors(rope_freq_factors, op))

    def __repr__(self) -> str:
        s = self.stats()
        return (f"KVCache(n_layers={self.n_layers}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
                f"page_size={self.page_size}, k_dtype={self.k_dtype!r}, v_dtype={self.v_dtype!r}, "
                f"budget_tokens={self.budget_tokens}, pages_used={s['pages_used']}/{s['pages_total']}, "
                f"sequences={len(s['lengths'])})")


def kv_cache_sizes(n_layers: int, n_kv_heads: int, head_dim: int, budget_bytes: int,
                   page_size: int = 16) -> Dict[Tuple[str, str], Dict[str, int]]:
    """Bytes per token (all layers, K + V) and the budget in tokens for every (k_dtype, v_dtype)
    choice, as a cache created with these arguments would have them."""
    out = {}
    for kd in KV_DTYPES:
        for vd in KV_DTYPES:
            if "q8_0" in (kd, vd) and head_dim % 32:
                continue
            row = _core.kv_row_bytes(kd, head_dim) + _core.kv_row_bytes(vd, head_dim)
            bpt = n_layers * n_kv_heads * row
            page = bpt * page_size
            out[(kd, vd)] = {"bytes_per_token": bpt, "budget_tokens": budget_bytes // page * page_size}
    return out


def attention_decode(
    cache: KVCache,
    layer: int,
    seq_ids: Union[Sequence[int], np.ndarray],
    q: np.ndarray,
    *,
    scale: Optional[float] = None,
    q_rotated: bool = False,
    threads: Optional[int] = None,
    isa: Optional[str] = None,
) -> np.ndarray:
    """One decode step: ``q[n_seqs, n_heads, head_dim]`` (float32, one query per sequence, at the
    sequence's last position) attends to all cached tokens of its sequence in ``layer``.

    GQA: ``n_heads`` is a multiple of the cache's ``n_kv_heads`` (1:1, grouped, or MQA). RoPE is
    applied to q at position ``length - 1`` unless ``q_rotated``. ``scale`` defaults to
    1/sqrt(head_dim). Online softmax over the pages; threads split heads and, for long contexts,
    pages (split-K). Returns float32 ``[n_seqs, n_heads, head_dim]``.
    """
    if not isinstance(q, np.ndarray):
        raise ValueError(f"[attention_decode] q must be a numpy array, got {type(q).__name__}")
    ids = np.ascontiguousarray(np.asarray(seq_ids, dtype=np.int64).reshape(-1))
    if ids.size and (ids.min() < -2**31 or ids.max() >= 2**31):
        raise ValueError("[attention_decode] sequence id out of range")
    return _core.attention_decode(cache, _int(layer, "layer", "attention_decode"), ids.astype(np.int32), q,
                                  0.0 if scale is None else float(scale), bool(q_rotated),
                                  _threads(threads, "attention_decode"), isa or "")


def attention_prefill(
    cache: KVCache,
    layer: int,
    seq_id: int,
    q: np.ndarray,
    *,
    scale: Optional[float] = None,
    q_rotated: bool = False,
    threads: Optional[int] = None,
    isa: Optional[str] = None,
) -> np.ndarray:
    """Causal attention for a chunk: ``q[n_q, n_heads, head_dim]`` are the queries of the last
    ``n_q`` positions of ``seq_id`` (whose K/V were already written); query i at position
    ``length - n_q + i`` sees every cached token at or before it. Flash-attention style tiles keep
    memory O(tile x (head_dim + page_size)). Returns float32 ``[n_q, n_heads, head_dim]``.
    """
    if not isinstance(q, np.ndarray):
        raise ValueError(f"[attention_prefill] q must be a numpy array, got {type(q).__name__}")
    return _core.attention_prefill(cache, _int(layer, "layer", "attention_prefill"),
                                   _int(seq_id, "seq_id", "attention_prefill"), q,
                                   0.0 if scale is None else float(scale), bool(q_rotated),
                                   _threads(threads, "attention_prefill"), isa or "")


def rope(x: np.ndarray, positions: Union[Sequence[int], np.ndarray], *, mode: str = "normal",
         freq_base: float = 10000.0, freq_scale: float = 1.0,
         freq_factors: Optional[Union[Sequence[float], np.ndarray]] = None) -> np.ndarray:
    """Rotary position embedding of ``x[n, head_dim]`` or ``x[n, n_heads, head_dim]`` (float32),
    row t at ``positions[t]``. ``mode="normal"``: pairs (x[2i], x[2i+1]) (ggml mode 0, GGUF Llama);
    ``"neox"``: pairs (x[i], x[i + d/2]) (Qwen2). theta_i = pos * freq_scale * freq_base^(-2i/d),
    divided by ``freq_factors[i]`` when given (d/2 finite values > 0; GGUF rope_freqs.weight).
    Returns a new float32 array."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"[rope] x must be a numpy array, got {type(x).__name__}")
    pos = np.ascontiguousarray(np.asarray(positions, dtype=np.int64).reshape(-1))
    return _core.rope(x, pos, mode, float(freq_base), float(freq_scale), _factors(freq_factors, "rope"))


def _factors(f, op: str) -> Optional[np.ndarray]:
    """RoPE frequency factors as a contiguous 1-D float32 array (None stays None)."""
    if f is None:
        return None
    try:
        a = np.asarray(f, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"[{op}] rope frequency factors must be a 1-D array of numbers") from None
    if a.ndim != 1:
        raise ValueError(f"[{op}] rope frequency factors must be 1-D, got shape {a.shape}")
    with np.errstate(over="ignore"):  # out-of-range values become inf: refused by the core
        return np.ascontiguousarray(a, np.float32)
