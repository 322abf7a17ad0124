"""Page-table behaviour of the KV cache: accounting, fork + copy-on-write, truncate, remove and page
reuse, context shift, budget exhaustion and argument errors."""

import numpy as np
import pytest

import xsil
from xsil.testing import attention_ref as R

from _attn_util import assert_close, expected, rand_kv

NKV, HD, H = 2, 64, 8


def make(budget_tokens=256, page_size=16, dt="f32", **kw):
    return xsil.KVCache(1, NKV, HD, page_size=page_size, k_dtype=dt, v_dtype=dt, budget_tokens=budget_tokens, **kw)


def decode(cache, s, q):
    return xsil.attention_decode(cache, 0, [s], q)


def test_sizes_and_accounting():
    c = xsil.KVCache(2, 4, 64, page_size=16, k_dtype="q8_0", v_dtype="f16", budget_bytes=1 << 20)
    # K q8_0: 2 blocks x 34 = 68 bytes, V f16: 128 bytes; x 4 heads x 2 layers
    assert c.bytes_per_token == 2 * 4 * (68 + 128)
    assert c.page_bytes == c.bytes_per_token * 16
    assert c.budget_tokens == (1 << 20) // c.page_bytes * 16
    assert c.stats()["pool_bytes"] <= 1 << 20
    # The budget is never exceeded, even by the allocation granule.
    odd = xsil.KVCache(1, 1, 32, page_size=1, k_dtype="q8_0", v_dtype="q8_0", budget_bytes=68 * 3 + 10)
    assert odd.n_pages == 2  # 3 pages = 204 bytes, but the 64-byte granule would make it 256 > 214
    sizes = xsil.kv_cache_sizes(2, 4, 64, 1 << 20)
    assert sizes[("q8_0", "f16")] == {"bytes_per_token": c.bytes_per_token, "budget_tokens": c.budget_tokens}
    assert sizes[("f32", "f32")]["bytes_per_token"] == 2 * 4 * 64 * 8
    st = c.stats()
    assert st["pages_used"] == 0 and st["pages_free"] == c.n_pages and st["lengths"] == {}
    s = c.add_sequence()
    c.reserve(s, 17)
    st = c.stats()
    assert st["pages_used"] == 2 and st["lengths"] == {s: 17} and st["bytes_used"] == 2 * c.page_bytes
    assert c.check() == ""


def test_fork_copy_on_write_isolation(rng):
    c = make()
    a = c.add_sequence()
    k, v = rand_kv(rng, 40, NKV, HD)  # 2 full pages + 8 tokens
    c.append(a, k, v)
    used = c.stats()["pages_used"]
    b = c.fork(a)
    assert c.stats()["pages_used"] == used  # a shared prompt costs its memory once
    assert c.page_table(a) == c.page_table(b)
    assert all(c.refcount(p) == 2 for p in c.page_table(a))
    # Diverge: b appends into the shared partial page -> that page is copied, full pages stay shared.
    kb, vb = rand_kv(rng, 3, NKV, HD)
    c.append(b, kb, vb)
    ka, va = rand_kv(rng, 5, NKV, HD)
    c.append(a, ka, va)
    pa, pb = c.page_table(a), c.page_table(b)
    assert pa[:2] == pb[:2] and pa[2] != pb[2]
    assert c.stats()["pages_used"] == used + 1
    assert c.check() == ""
    q = rng.standard_normal((1, H, HD)).astype(np.float32)
    ga, gb = decode(c, a, q), decode(c, b, q)
    wa = expected(c, q, np.concatenate([k, ka]), np.concatenate([v, va]), [44])
    wb = expected(c, q, np.concatenate([k, kb]), np.concatenate([v, vb]), [42])
    assert_close(ga, wa, v, "f32", "f32", 3.0)
    assert_close(gb, wb, v, "f32", "f32", 3.0)
    # Removing the source keeps the fork intact.
    c.remove_sequence(a)
    assert_close(decode(c, b, q), wb, v, "f32", "f32", 3.0)
    assert all(c.refcount(p) == 1 for p in c.page_table(b))
    assert c.check() == ""


def test_fork_then_rewrite_shared_position(rng):
    """Overwriting an already shared position (write below the length) copies the page first."""
    c = make()
    a = c.add_sequence()
    k, v = rand_kv(rng, 20, NKV, HD)
    c.append(a, k, v)
    b = c.fork(a)
    k2, v2 = rand_kv(rng, 1, NKV, HD)
    c.write(0, b, 3, k2, v2)
    Ka, _ = c.read(0, a)
    Kb, _ = c.read(0, b)
    np.testing.assert_allclose(Ka, R.rope(k, np.arange(20)), atol=1e-5)
    assert not np.allclose(Ka[3], Kb[3]) and np.allclose(Ka[4:], Kb[4:])
    assert c.check() == ""


def test_truncate_and_regrow(rng):
    c = make()
    s = c.add_sequence()
    k, v = rand_kv(rng, 50, NKV, HD)
    c.append(s, k, v)
    c.truncate(s, 17)
    assert c.length(s) == 17 and len(c.page_table(s)) == 2
    assert c.stats()["pages_used"] == 2
    k2, v2 = rand_kv(rng, 10, NKV, HD)
    c.append(s, k2, v2)
    q = rng.standard_normal((1, H, HD)).astype(np.float32)
    want = expected(c, q, np.concatenate([k[:17], k2]), np.concatenate([v[:17], v2]), [26])
    assert_close(decode(c, s, q), want, v, "f32", "f32", 3.0)
    c.truncate(s, 0)
    assert c.length(s) == 0 and c.page_table(s) == [] and c.stats()["pages_used"] == 0
    with pytest.raises(ValueError, match=r"\[kv_cache.truncate\] length 5 is out of range \[0, 0\]"):
        c.truncate(s, 5)
    assert c.check() == ""


def test_truncate_fork_speculative_rollback(rng):
    """Speculative decoding: fork, draft, then truncate the draft back; the original is untouched."""
    c = make()
    a = c.add_sequence()
    k, v = rand_kv(rng, 30, NKV, HD)
    c.append(a, k, v)
    d = c.fork(a)
    kd, vd = rand_kv(rng, 4, NKV, HD)
    c.append(d, kd, vd)
    c.truncate(d, 31)  # accept one drafted token
    q = rng.standard_normal((1, H, HD)).astype(np.float32)
    want = expected(c, q, np.concatenate([k, kd[:1]]), np.concatenate([v, vd[:1]]), [30])
    assert_close(decode(c, d, q), want, v, "f32", "f32", 3.0)
    assert_close(decode(c, a, q), expected(c, q, k, v, [29]), v, "f32", "f32", 3.0)
    assert c.check() == ""


def test_remove_and_reuse_pages(rng):
    c = make(budget_tokens=64)
    a, b = c.add_sequence(), c.add_sequence()
    k, v = rand_kv(rng, 32, NKV, HD)
    c.append(a, k, v)
    c.append(b, k, v)
    assert c.stats()["pages_free"] == 0
    pages_a = set(c.page_table(a))
    c.remove_sequence(a)
    assert c.stats()["pages_free"] == 2
    s = c.add_sequence()
    c.append(s, k, v)
    assert set(c.page_table(s)) == pages_a
    assert s not in (a, b) and a not in c.sequences
    with pytest.raises(ValueError, match=rf"unknown sequence id {a}"):
        c.length(a)
    assert c.check() == ""


def test_budget_exhausted_error_never_overruns(rng):
    c = make(budget_tokens=64)
    seqs = [c.add_sequence() for _ in range(3)]
    k, v = rand_kv(rng, 16, NKV, HD)
    c.append(seqs[0], k, v)
    c.append(seqs[1], k, v)
    c.append(seqs[2], np.concatenate([k, k]), np.concatenate([v, v]))
    before = c.stats()
    with pytest.raises(ValueError, match=r"^\[kv_cache\] budget of 64 tokens exhausted: 3 sequences hold 64 .*"
                                         r"free a sequence, raise the budget, or enable context shift"):
        c.append(seqs[0], k[:1], v[:1])
    assert c.stats() == before  # nothing changed
    with pytest.raises(ValueError, match="budget of 64 tokens exhausted"):
        c.fork(seqs[0]) and c.append(c.sequences[-1], k[:1], v[:1])
    assert c.check() == ""


def test_n_ctx_limit_error():
    c = make(budget_tokens=256, n_ctx=32)
    s = c.add_sequence()
    c.reserve(s, 32)
    with pytest.raises(ValueError, match=r"\[kv_cache\] sequence 0 would reach 33 tokens, past n_ctx=32"):
        c.reserve(s, 1)


@pytest.mark.parametrize("dt", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("mode", ["normal", "neox", "none"])
def test_context_shift_equals_fresh(dt, mode, rng):
    """After a shift, attention equals attention computed from scratch on the kept tokens at their
    new positions (keys re-rotated)."""
    n_ctx, n_keep = 64, 5
    c = xsil.KVCache(1, NKV, HD, page_size=16, k_dtype=dt, v_dtype=dt, budget_tokens=256, n_ctx=n_ctx,
                     context_shift="shift", n_keep=n_keep, rope=mode, rope_freq_base=5000.0)
    s = c.add_sequence()
    k, v = rand_kv(rng, 70, NKV, HD)
    c.append(s, k[:64], v[:64])
    c.append(s, k[64:70], v[64:70])  # passes n_ctx: drops (64 - 5) // 2 = 29 tokens after the first 5
    dropped = c.n_shifted(s)
    assert dropped == 29 and c.length(s) == 70 - 29
    kept = np.r_[0:n_keep, n_keep + dropped:70]
    q = rng.standard_normal((1, H, HD)).astype(np.float32)
    got = decode(c, s, q)
    want = expected(c, q, k[kept], v[kept], [len(kept) - 1])
    # Re-rotating a stored key rounds it a second time: each kept key element may be one storage
    # quantum off, which moves each score by at most ds = scale * sum_i |q_i| * quantum_i and the
    # output (a convex combination of V) by at most 2 * ds * max|V|. V is moved exactly.
    kr = R.rope(k[kept], np.arange(len(kept)), mode, 5000.0)
    qk = R.quantum(kr, dt).max(axis=(0, 1))  # per element of head_dim, worst over tokens and heads
    ds = (np.abs(q[0]) @ qk).max() / np.sqrt(HD)
    vmax = np.abs(R.store(v[kept], dt)).max()
    bound = 2 * ds * vmax * 1.1 + 3e-5 * vmax
    assert np.abs(got - want).max() <= bound, (np.abs(got - want).max(), bound)
    if dt == "f32":
        assert_close(got, want, v[kept], dt, dt, 3.0)
    assert c.check() == ""
    # And the stored keys are the kept keys rotated at their new positions.
    K, _ = c.read(0, s)
    tol = {"f32": 1e-4, "f16": 4e-3, "q8_0": 0.08}[dt]
    assert np.abs(K - kr).max() < tol


def test_context_shift_on_budget_and_manual_shift(rng):
    c = make(budget_tokens=64, context_shift="shift", n_keep=4)
    s = c.add_sequence()
    k, v = rand_kv(rng, 80, NKV, HD)
    c.append(s, k[:64], v[:64])
    c.append(s, k[64:65], v[64:65])  # pool full: shift frees pages
    assert c.length(s) == 65 - c.n_shifted(s) and c.n_shifted(s) > 0
    assert c.check() == ""
    n = c.length(s)
    c.shift(s, 3)
    assert c.length(s) == n - 3
    with pytest.raises(ValueError, match=r"\[kv_cache.shift\] n_discard=1000 is out of range"):
        c.shift(s, 1000)


def test_shift_of_forked_sequence_keeps_source(rng):
    c = make(budget_tokens=256, n_ctx=48, context_shift="shift", n_keep=2)
    a = c.add_sequence()
    k, v = rand_kv(rng, 60, NKV, HD)
    c.append(a, k[:48], v[:48])
    b = c.fork(a)
    c.append(b, k[48:50], v[48:50])
    q = rng.standard_normal((1, H, HD)).astype(np.float32)
    assert_close(decode(c, a, q), expected(c, q, k[:48], v[:48], [47]), v, "f32", "f32", 3.0)
    d = c.n_shifted(b)
    kept = np.r_[0:2, 2 + d:50]
    assert_close(decode(c, b, q), expected(c, q, k[kept], v[kept], [len(kept) - 1]), v, "f32", "f32", 3.0)
    assert c.check() == ""


def test_bad_arguments(rng):
    c = make()
    s = c.add_sequence()
    k, v = rand_kv(rng, 4, NKV, HD)
    c.append(s, k, v)
    q = np.zeros((1, H, HD), np.float32)
    with pytest.raises(ValueError, match=r"\[attention_decode\] unknown sequence id 99"):
        xsil.attention_decode(c, 0, [99], q)
    with pytest.raises(ValueError, match=r"\[attention_decode\] layer=1 is out of range \[0, 1\)"):
        xsil.attention_decode(c, 1, [s], q)
    with pytest.raises(ValueError, match=r"\[attention_decode\] n_heads=3 must be a positive multiple of n_kv_heads=2"):
        xsil.attention_decode(c, 0, [s], np.zeros((1, 3, HD), np.float32))
    with pytest.raises(ValueError, match=r"\[attention_decode\] q must have shape \(1, 8, 64\)"):
        xsil.attention_decode(c, 0, [s], np.zeros((1, 8, 32), np.float32))
    with pytest.raises(ValueError, match=r"\[attention_decode\] q must have shape \(1, 8, 64\)"):
        xsil.attention_decode(c, 0, [s], np.zeros((2, 8, 64), np.float32))
    with pytest.raises(ValueError, match=r"\[attention_decode\] q must be float32"):
        xsil.attention_decode(c, 0, [s], np.zeros((1, 8, 64)))
    with pytest.raises(ValueError, match=r"\[attention_decode\] sequence id 0 appears twice"):
        xsil.attention_decode(c, 0, [s, s], np.zeros((2, 8, 64), np.float32))
    e = c.add_sequence()
    with pytest.raises(ValueError, match=rf"\[attention_decode\] sequence {e} is empty"):
        xsil.attention_decode(c, 0, [e], q)
    with pytest.raises(ValueError, match=r"\[attention_prefill\] n_q=5 query tokens, but sequence 0 has 4"):
        xsil.attention_prefill(c, 0, s, np.zeros((5, 8, 64), np.float32))
    with pytest.raises(ValueError, match=r"\[attention_prefill\] unknown sequence id 7"):
        xsil.attention_prefill(c, 0, 7, np.zeros((1, 8, 64), np.float32))
    with pytest.raises(ValueError, match=r"\[kv_cache.write\] positions \[4, 5\) are outside sequence 0 of length 4"):
        c.write(0, s, 4, k[:1], v[:1])
    with pytest.raises(ValueError, match=r"\[kv_cache.write\] positions \[-1, 0\)"):
        c.write(0, s, -1, k[:1], v[:1])
    with pytest.raises(ValueError, match=r"\[kv_cache.write\] layer=2 is out of range"):
        c.write(2, s, 0, k[:1], v[:1])
    with pytest.raises(ValueError, match=r"\[kv_cache.write\] k must have shape \(1, 2, 64\)"):
        c.write(0, s, 0, k[:1, :1], v[:1])
    with pytest.raises(ValueError, match=r"\[kv_cache.append\] unknown sequence id 42"):
        c.append(42, k, v)
    with pytest.raises(ValueError, match=r"\[kv_cache.fork\] unknown sequence id 42"):
        c.fork(42)
    with pytest.raises(ValueError, match=r"\[kv_cache.remove\] unknown sequence id 42"):
        c.remove_sequence(42)
    with pytest.raises(ValueError, match=r"\[attention_decode\] threads=0 is out of range"):
        xsil.attention_decode(c, 0, [s], q, threads=0)
    assert c.check() == ""


def test_bad_construction():
    with pytest.raises(ValueError, match=r"\[kv_cache\] head_dim=80 is not a multiple of the Q8_0 block size 32"):
        xsil.KVCache(1, 2, 80, k_dtype="q8_0", budget_tokens=64)
    with pytest.raises(ValueError, match=r"\[kv_cache\] unsupported KV dtype 'q4_0'"):
        xsil.KVCache(1, 2, 64, k_dtype="q4_0", budget_tokens=64)
    with pytest.raises(ValueError, match=r"\[kv_cache\] budget of 100 bytes is smaller than one page"):
        xsil.KVCache(1, 2, 64, budget_bytes=100)
    with pytest.raises(ValueError, match=r"give exactly one of budget_bytes or budget_tokens"):
        xsil.KVCache(1, 2, 64)
    with pytest.raises(ValueError, match=r"\[kv_cache\] head_dim=63 must be even"):
        xsil.KVCache(1, 2, 63, budget_tokens=64)
    with pytest.raises(ValueError, match=r"\[kv_cache\] n_keep=64 must be in \[0, n_ctx=64\)"):
        xsil.KVCache(1, 2, 64, budget_tokens=64, n_keep=64)
    with pytest.raises(ValueError, match=r"\[kv_cache\] context_shift must be 'error' or 'shift'"):
        xsil.KVCache(1, 2, 64, budget_tokens=64, context_shift="drop")


def test_pages_follow_each_other(rng):
    """A sequence's next page is the first free one after its last, so its rows stay contiguous."""
    c = make(budget_tokens=256)
    a, b = c.add_sequence(), c.add_sequence()
    c.reserve(a, 40)
    c.reserve(b, 20)
    assert c.page_table(a) == [0, 1, 2] and c.page_table(b) == [3, 4]
    c.reserve(a, 30)  # continues after its own last page, skipping b's
    assert c.page_table(a) == [0, 1, 2, 5, 6]
    c.remove_sequence(b)
    d = c.add_sequence()
    c.reserve(d, 60)
    assert c.page_table(d) == [3, 4, 7, 8]
    assert c.check() == ""


# -- RoPE frequency factors (GGUF rope_freqs.weight) ------------------------------------------------
FF = np.r_[np.ones(12), [2.0, 3.5, 5.0, 6.5], np.full(16, 8.0)].astype(np.float32)  # HD / 2 = 32


@pytest.mark.parametrize("dt", ["f32", "f16"])
@pytest.mark.parametrize("mode", ["normal", "neox"])
def test_freq_factors_write_attend_and_shift(dt, mode, rng):
    """K stored rotated with the factors, q rotated with them in attention, and a context shift
    re-rotates the kept keys by -d with the same per-pair frequencies."""
    n_ctx, n_keep = 64, 5
    c = xsil.KVCache(1, NKV, HD, page_size=16, k_dtype=dt, v_dtype=dt, budget_tokens=256, n_ctx=n_ctx,
                     context_shift="shift", n_keep=n_keep, rope=mode, rope_freq_base=500000.0,
                     rope_freq_factors=FF)
    np.testing.assert_array_equal(c.rope_freq_factors, FF)
    s = c.add_sequence()
    k, v = rand_kv(rng, 70, NKV, HD)
    c.append(s, k[:40], v[:40])
    K, _ = c.read(0, s)
    tol = {"f32": 1e-4, "f16": 4e-3}[dt]
    assert np.abs(K - R.rope(k[:40], np.arange(40), mode, 500000.0, 1.0, FF)).max() < tol
    q = rng.standard_normal((1, H, HD)).astype(np.float32)
    assert_close(decode(c, s, q), expected(c, q, k[:40], v[:40], [39]), v[:40], dt, dt, 3.0)
    c.append(s, k[40:64], v[40:64])
    c.append(s, k[64:70], v[64:70])  # passes n_ctx: drops 29 tokens after the first 5
    dropped = c.n_shifted(s)
    assert dropped == 29
    kept = np.r_[0:n_keep, n_keep + dropped:70]
    kr = R.rope(k[kept], np.arange(len(kept)), mode, 500000.0, 1.0, FF)
    K, _ = c.read(0, s)
    assert np.abs(K - kr).max() < {"f32": 1e-4, "f16": 6e-3}[dt]
    # the standard frequencies would put the slow pairs somewhere else
    assert np.abs(K - R.rope(k[kept], np.arange(len(kept)), mode, 500000.0)).max() > 0.1
    got = decode(c, s, q)
    want = expected(c, q, k[kept], v[kept], [len(kept) - 1])
    assert np.abs(got - want).max() < (2e-4 if dt == "f32" else 2e-2)
    assert c.check() == ""


@pytest.mark.parametrize("mode", ["normal", "neox"])
def test_all_ones_freq_factors_equal_none_bit_exact(mode, rng):
    kw = dict(page_size=16, k_dtype="f16", v_dtype="f16", budget_tokens=128, n_ctx=48, context_shift="shift",
              n_keep=3, rope=mode, rope_freq_base=500000.0)
    a = xsil.KVCache(1, NKV, HD, rope_freq_factors=np.ones(HD // 2), **kw)
    b = xsil.KVCache(1, NKV, HD, **kw)
    assert b.rope_freq_factors is None
    k, v = rand_kv(rng, 60, NKV, HD)
    q = rng.standard_normal((1, H, HD)).astype(np.float32)
    for c in (a, b):
        s = c.add_sequence()
        c.append(s, k[:40], v[:40])
        c.append(s, k[40:60], v[40:60])  # shifts
    assert a.n_shifted(0) == b.n_shifted(0) > 0
    np.testing.assert_array_equal(a.read(0, 0)[0], b.read(0, 0)[0])
    np.testing.assert_array_equal(decode(a, 0, q), decode(b, 0, q))


def test_freq_factors_are_copied_and_checked():
    f = FF.copy()
    c = xsil.KVCache(1, NKV, HD, budget_tokens=64, rope_freq_factors=f)
    f[:] = -1.0  # the cache holds its own copy
    np.testing.assert_array_equal(c.rope_freq_factors, FF)
    with pytest.raises(ValueError, match=r"\[kv_cache\] rope frequency factors: 31 given, expected head_dim / 2 = 32"):
        xsil.KVCache(1, NKV, HD, budget_tokens=64, rope_freq_factors=FF[:31])
    with pytest.raises(ValueError, match=r"\[kv_cache\] rope frequency factor 0 must be finite and > 0"):
        xsil.KVCache(1, NKV, HD, budget_tokens=64, rope_freq_factors=-FF)
    with pytest.raises(ValueError, match=r"\[kv_cache\] rope frequency factors must be 1-D"):
        xsil.KVCache(1, NKV, HD, budget_tokens=64, rope_freq_factors=FF.reshape(2, 16))
