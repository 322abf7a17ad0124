"""Decode and prefill attention over the paged cache against the independent NumPy reference,
on every ISA tier this machine has, with 1 and 2 threads."""

import numpy as np
import pytest

import xsil
from xsil.testing import attention_ref as R

from _attn_util import assert_close, expected, fill, rand_kv

# (n_heads, n_kv_heads, head_dim, context, page_size, k_dtype, v_dtype): GQA ratios 1, 4, 8 and MQA,
# head_dim 64/80/128, contexts 1/15/16/17/1000, pages 16/32, every storage dtype, each at least once.
DECODE_CASES = [
    (8, 8, 64, 1, 16, "f32", "f32"),
    (8, 2, 64, 15, 16, "f16", "f16"),
    (16, 2, 128, 16, 16, "q8_0", "q8_0"),
    (8, 1, 80, 17, 16, "f16", "f32"),
    (32, 4, 64, 1000, 16, "q8_0", "q8_0"),
    (32, 4, 64, 1000, 32, "f16", "f16"),
    (4, 4, 128, 1000, 32, "f16", "q8_0"),
    (8, 1, 128, 1000, 16, "q8_0", "f16"),
    (32, 4, 80, 17, 32, "f32", "f16"),
    (16, 16, 80, 1000, 16, "f32", "f32"),
]


def ids(c):
    return "H{}kv{}d{}T{}p{}-{}-{}".format(*c)


@pytest.mark.parametrize("case", DECODE_CASES, ids=ids)
@pytest.mark.parametrize("threads", [1, 2])
def test_decode_matches_reference(tier, case, threads, rng):
    H, nkv, hd, T, ps, kd, vd = case
    cache = xsil.KVCache(1, nkv, hd, page_size=ps, k_dtype=kd, v_dtype=vd, budget_tokens=2048)
    s0 = cache.add_sequence()
    k, v = rand_kv(rng, T, nkv, hd)
    fill(cache, s0, k, v, chunks=(7, 1, 33))
    q = rng.standard_normal((1, H, hd)).astype(np.float32)
    got = xsil.attention_decode(cache, 0, [s0], q, threads=threads, isa=tier)
    want = expected(cache, q, k, v, [T - 1])
    l1 = np.abs(q).sum(-1).max() / np.sqrt(hd)
    assert_close(got, want, R.store(v, vd), kd, vd, l1, ids(case))
    assert cache.check() == ""


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_batch_of_sequences(tier, threads, rng):
    """Several sequences of different lengths in one call, sharing the pool."""
    H, nkv, hd = 8, 2, 64
    cache = xsil.KVCache(1, nkv, hd, page_size=16, k_dtype="f16", v_dtype="f16", budget_tokens=4096)
    lens = [1, 16, 17, 300, 45]
    data = []
    sids = []
    for T in lens:
        s = cache.add_sequence()
        k, v = rand_kv(rng, T, nkv, hd)
        fill(cache, s, k, v, chunks=(5,))
        data.append((k, v))
        sids.append(s)
    q = rng.standard_normal((len(lens), H, hd)).astype(np.float32)
    got = xsil.attention_decode(cache, 0, sids[::-1], q[::-1].copy(), threads=threads, isa=tier)[::-1]
    for i, T in enumerate(lens):
        want = expected(cache, q[i:i + 1], *data[i], [T - 1])
        assert_close(got[i:i + 1], want, R.store(data[i][1], "f16"), "f16", "f16", 3.0, f"seq {i}")


def test_decode_long_context_split_k(tier, rng):
    """A long context with few heads is split across pages (split-K); threads 1 and 2 agree with the
    reference and closely with each other."""
    H, nkv, hd, T = 4, 1, 64, 3000
    cache = xsil.KVCache(1, nkv, hd, page_size=16, k_dtype="q8_0", v_dtype="q8_0", budget_tokens=4096)
    s = cache.add_sequence()
    k, v = rand_kv(rng, T, nkv, hd)
    cache.append(s, k, v)
    q = rng.standard_normal((1, H, hd)).astype(np.float32) * 3
    o1 = xsil.attention_decode(cache, 0, [s], q, threads=1, isa=tier)
    o2 = xsil.attention_decode(cache, 0, [s], q, threads=2, isa=tier)
    want = expected(cache, q, k, v, [T - 1])
    assert_close(o1, want, R.store(v, "q8_0"), "q8_0", "q8_0", 10.0, "t1")
    assert_close(o2, want, R.store(v, "q8_0"), "q8_0", "q8_0", 10.0, "t2")
    np.testing.assert_allclose(o1, o2, atol=1e-5)


def test_decode_explicit_scale_and_rotated_q(tier, rng):
    H, nkv, hd, T = 4, 2, 64, 40
    cache = xsil.KVCache(1, nkv, hd, k_dtype="f32", v_dtype="f32", budget_tokens=64, rope="neox",
                         rope_freq_base=1e6, rope_freq_scale=0.25)
    s = cache.add_sequence()
    k, v = rand_kv(rng, T, nkv, hd)
    cache.append(s, k, v)
    q = rng.standard_normal((1, H, hd)).astype(np.float32)
    got = xsil.attention_decode(cache, 0, [s], q, scale=0.3, isa=tier)
    want = expected(cache, q, k, v, [T - 1], scale=0.3)
    assert_close(got, want, v, "f32", "f32", 3.0)
    qr = xsil.rope(q[0], np.full(H, T - 1), mode="neox", freq_base=1e6, freq_scale=0.25)[None]
    got2 = xsil.attention_decode(cache, 0, [s], qr, scale=0.3, q_rotated=True, isa=tier)
    np.testing.assert_allclose(got2, got, atol=1e-6)


PREFILL_CASES = [
    # (n_heads, n_kv, hd, cached prefix, chunk, page, k_dtype, v_dtype)
    (8, 8, 64, 0, 15, 16, "f32", "f32"),
    (32, 4, 64, 0, 100, 16, "f16", "f16"),
    (16, 2, 128, 17, 40, 32, "q8_0", "q8_0"),
    (8, 1, 80, 33, 17, 16, "f16", "f16"),
    (32, 4, 64, 900, 100, 32, "q8_0", "f16"),
    (4, 4, 128, 5, 1, 16, "f32", "q8_0"),
]


@pytest.mark.parametrize("case", PREFILL_CASES, ids=lambda c: "H{}kv{}d{}P{}C{}p{}-{}-{}".format(*c))
@pytest.mark.parametrize("threads", [1, 2])
def test_prefill_matches_reference(tier, case, threads, rng):
    H, nkv, hd, P, C, ps, kd, vd = case
    T = P + C
    cache = xsil.KVCache(1, nkv, hd, page_size=ps, k_dtype=kd, v_dtype=vd, budget_tokens=2048)
    s = cache.add_sequence()
    k, v = rand_kv(rng, T, nkv, hd)
    if P:
        cache.append(s, k[:P], v[:P])
    pos0 = cache.reserve(s, C)
    assert pos0 == P
    cache.write(0, s, pos0, k[P:], v[P:])
    q = rng.standard_normal((C, H, hd)).astype(np.float32)
    got = xsil.attention_prefill(cache, 0, s, q, threads=threads, isa=tier)
    want = expected(cache, q, k, v, np.arange(P, T))
    assert_close(got, want, R.store(v, vd), kd, vd, np.abs(q).sum(-1).max() / np.sqrt(hd), str(case))


def test_prefill_last_row_equals_decode(tier, rng):
    H, nkv, hd, T = 8, 2, 64, 50
    cache = xsil.KVCache(1, nkv, hd, k_dtype="f16", v_dtype="f16", budget_tokens=64)
    s = cache.add_sequence()
    k, v = rand_kv(rng, T, nkv, hd)
    cache.append(s, k, v)
    q = rng.standard_normal((T, H, hd)).astype(np.float32)
    pre = xsil.attention_prefill(cache, 0, s, q, isa=tier)
    dec = xsil.attention_decode(cache, 0, [s], q[-1:], isa=tier)
    np.testing.assert_allclose(pre[-1], dec[0], atol=2e-5)


def test_multi_layer_cache(tier, rng):
    """Layers are independent: layer l reads only what was written for layer l."""
    L, H, nkv, hd, T = 3, 4, 2, 64, 20
    cache = xsil.KVCache(L, nkv, hd, k_dtype="f16", v_dtype="q8_0", budget_tokens=64)
    s = cache.add_sequence()
    k = rng.standard_normal((L, T, nkv, hd)).astype(np.float32)
    v = rng.standard_normal((L, T, nkv, hd)).astype(np.float32)
    cache.append(s, k, v)
    q = rng.standard_normal((1, H, hd)).astype(np.float32)
    for layer in range(L):
        got = xsil.attention_decode(cache, layer, [s], q, isa=tier)
        want = expected(cache, q, k[layer], v[layer], [T - 1])
        assert_close(got, want, R.store(v[layer], "q8_0"), "f16", "q8_0", 3.0, f"layer {layer}")
