"""The device paged KV cache (xsil._cuda.KVCache) against the CPU cache (xsil.KVCache): the same
scenarios on both, comparing page tables, accounting, stored rows, error messages and attention
outputs. Runs on a GPU or on the CUDA-on-CPU emulator; skips when neither is available."""

import numpy as np
import pytest

import xsil

from _attn_util import rand_kv

from xsil.backends.cuda import _load_ext

# the real extension on a GPU machine, else the CPU-emulated build of the same sources (tests/cuda_emu)
cuda_ext, _why = _load_ext()
if cuda_ext is None:
    pytest.skip(_why, allow_module_level=True)
_info = cuda_ext.device_info()
pytestmark = pytest.mark.skipif(not _info["ok"], reason=f"cuda: {_info['reason']}")


def pair(n_layers=1, n_kv=2, hd=64, page_size=16, dt="f16", budget_tokens=256, **kw):
    """(cpu, cuda) caches with identical parameters."""
    args = dict(page_size=page_size, k_dtype=dt, v_dtype=dt, budget_tokens=budget_tokens, **kw)
    return xsil.KVCache(n_layers, n_kv, hd, **args), cuda_ext.KVCache(n_layers, n_kv, hd, **args)


def same_books(c, g):
    assert c.sequences == g.sequences
    for s in c.sequences:
        assert c.page_table(s) == g.page_table(s)
        assert c.length(s) == g.length(s)
        assert c.n_shifted(s) == g.n_shifted(s)
    assert c.stats() == g.stats()
    assert c.check() == "" and g.check() == ""


def same_rows(c, g, layers=1, k_exact=True):
    for s in c.sequences:
        for layer in range(layers):
            kc, vc = c.read(layer, s)
            kg, vg = g.read(layer, s)
            np.testing.assert_array_equal(vg, vc)  # V is stored as given: bit-identical
            if k_exact:
                np.testing.assert_array_equal(kg, kc)
            else:  # K is rotated on the device: cos/sin may differ in the last bit on a real GPU
                np.testing.assert_allclose(kg, kc, rtol=0, atol=2e-2 * float(np.abs(kc).max()) + 1e-6)


def both(c, g, fn):
    """fn on both caches: the same result, or the same error message."""
    errs, outs = [], []
    for x in (c, g):
        try:
            outs.append(fn(x))
            errs.append(None)
        except ValueError as e:
            outs.append(None)
            errs.append(str(e))
    assert errs[0] == errs[1], errs
    if errs[0] is None:
        assert outs[0] == outs[1] if not isinstance(outs[0], np.ndarray) else np.array_equal(outs[0], outs[1])
    return outs[0], errs[0]


@pytest.mark.parametrize("dt", ["f16", "q8_0", "f32"])
@pytest.mark.parametrize("rope", ["normal", "neox"])
def test_write_matches_cpu_rows(dt, rope, rng):
    c, g = pair(n_layers=2, dt=dt, rope=rope)
    s = c.add_sequence()
    assert g.add_sequence() == s
    for n in (5, 16, 23, 1):
        k = rng.standard_normal((2, n, 2, 64)).astype(np.float32)
        v = rng.standard_normal((2, n, 2, 64)).astype(np.float32)
        both(c, g, lambda x: x.append(s, k, v))
    same_books(c, g)
    same_rows(c, g, layers=2, k_exact=False)
    # rope "none": K stored as given, bit-identical in every dtype
    c2, g2 = pair(dt=dt, rope="none")
    s = c2.add_sequence()
    g2.add_sequence()
    k, v = rand_kv(rng, 37, 2, 64)
    both(c2, g2, lambda x: x.append(s, k, v))
    same_rows(c2, g2)


def test_fork_cow_truncate_remove_and_errors(rng):
    c, g = pair(dt="f16", budget_tokens=128)
    a = c.add_sequence()
    g.add_sequence()
    k, v = rand_kv(rng, 40, 2, 64)
    both(c, g, lambda x: x.append(a, k, v))
    b, _ = both(c, g, lambda x: x.fork(a))
    same_books(c, g)
    kb, vb = rand_kv(rng, 3, 2, 64)
    both(c, g, lambda x: x.append(b, kb, vb))  # copy-on-write of the shared partial page
    ka, va = rand_kv(rng, 5, 2, 64)
    both(c, g, lambda x: x.append(a, ka, va))
    same_books(c, g)
    same_rows(c, g, k_exact=False)
    # overwrite a shared full page through write(): COW of a full page
    d, _ = both(c, g, lambda x: x.fork(b))
    kw, vw = rand_kv(rng, 2, 2, 64)
    both(c, g, lambda x: x.write(0, d, 3, kw, vw))
    same_books(c, g)
    same_rows(c, g, k_exact=False)
    both(c, g, lambda x: x.truncate(a, 17))
    both(c, g, lambda x: x.remove_sequence(b))
    same_books(c, g)
    # errors: the same messages
    for fn in (
        lambda x: x.reserve(a, 10_000),
        lambda x: x.reserve(a, 200),
        lambda x: x.truncate(a, 99),
        lambda x: x.fork(77),
        lambda x: x.write(0, a, 40, kw, vw),
        lambda x: x.write(3, a, 0, kw, vw),
        lambda x: x.shift(a, 0),
    ):
        _, err = both(c, g, fn)
        assert err is not None
    # fill the pool: the budget error text is shared
    e = c.add_sequence()
    g.add_sequence()
    _, err = both(c, g, lambda x: [x.reserve(e, 16) for _ in range(10)])
    assert err and "exhausted" in err
    same_books(c, g)


@pytest.mark.parametrize("dt", ["f16", "q8_0"])
def test_context_shift_matches_cpu(dt, rng):
    c, g = pair(n_layers=2, dt=dt, budget_tokens=64, n_ctx=48, context_shift="shift", n_keep=5)
    s = c.add_sequence()
    g.add_sequence()
    for n in (30, 15, 9, 20):
        k = rng.standard_normal((2, n, 2, 64)).astype(np.float32)
        v = rng.standard_normal((2, n, 2, 64)).astype(np.float32)
        both(c, g, lambda x: x.append(s, k, v))
    t, _ = both(c, g, lambda x: x.fork(s))
    both(c, g, lambda x: x.shift(t, 7))  # shift of a shared sequence: COW of the moved pages
    same_books(c, g)
    same_rows(c, g, layers=2, k_exact=False)


def _decode_pair(c, g, ids, q, **kw):
    want = xsil.attention_decode(c, 0, ids, q)
    got = cuda_ext.attention_decode(g, 0, np.asarray(ids, np.int32), q, **kw)
    return got, want


@pytest.mark.parametrize("dt", ["f16", "q8_0"])
@pytest.mark.parametrize("heads", [(4, 2), (3, 1), (2, 2)])  # GQA, MQA, 1:1
def test_decode_one_and_many_splits(dt, heads, rng):
    H, nkv = heads
    c, g = pair(n_kv=nkv, hd=64, dt=dt, budget_tokens=512)
    ids = []
    for T in (100, 37, 1, 16):
        s = c.add_sequence()
        g.add_sequence()
        k, v = rand_kv(rng, T, nkv, 64)
        both(c, g, lambda x: x.append(s, k, v))
        ids.append(s)
    q = rng.standard_normal((len(ids), H, 64)).astype(np.float32)
    one, want = _decode_pair(c, g, ids, q)  # 512 tokens per split: one split each
    many, _ = _decode_pair(c, g, ids, q, split_tokens=16, max_splits=8)  # up to 7 splits
    tol = 2e-5 if dt == "f16" else 2e-3  # K rows may differ in one quantum (device rotation)
    np.testing.assert_allclose(one, want, rtol=0, atol=tol * 10)
    np.testing.assert_allclose(many, one, rtol=0, atol=1e-5)


def test_decode_long_context(rng):
    c, g = pair(n_kv=1, hd=32, dt="f16", budget_tokens=4096, page_size=32)
    s = c.add_sequence()
    g.add_sequence()
    k, v = rand_kv(rng, 4096, 1, 32)
    both(c, g, lambda x: x.append(s, k, v))
    q = rng.standard_normal((1, 2, 32)).astype(np.float32)
    got, want = _decode_pair(c, g, [s], q)  # 8 splits of 512 tokens
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)


# GQA-grouped decode: one CTA per (KV head, sequence, split) serves the G = H / n_kv query heads of
# its group (warps of up to 4 heads, 16 heads per pass over the keys). Groups 1..16 (one pass: 1, 2
# or 4 warps per chunk of heads, 6 and 12 leave chunks of unequal size / an idle warp), MQA (32: two
# passes; 20: a partial second pass), every head_dim bucket, every storage dtype, short contexts (one
# token, one partial page) and long ones split many ways, against the CPU cache. rope "none": K is
# stored bit-identically on both sides, so only float32 reduction order differs.
GQA_CASES = [  # (n_heads, n_kv, head_dim)
    (2, 2, 64),  # G = 1
    (4, 2, 64),  # G = 2
    (8, 2, 128),  # G = 4
    (16, 2, 64),  # G = 8 (TinyLlama's grouping)
    (32, 2, 32),  # G = 16
    (12, 2, 64),  # G = 6
    (12, 1, 256),  # G = 12
    (32, 1, 64),  # MQA, G = 32
    (20, 1, 96),  # MQA, G = 20
]


@pytest.mark.parametrize("dt", ["f16", "q8_0", "f32"])
@pytest.mark.parametrize("case", GQA_CASES, ids=lambda c: f"H{c[0]}-kv{c[1]}-hd{c[2]}")
def test_decode_gqa_groups_match_cpu(dt, case, rng):
    H, nkv, hd = case
    c, g = pair(n_kv=nkv, hd=hd, dt=dt, budget_tokens=1024, rope="none")
    ids = []
    for T in (1, 9, 16, 70, 301):
        s = c.add_sequence()
        g.add_sequence()
        k, v = rand_kv(rng, T, nkv, hd)
        both(c, g, lambda x: x.append(s, k, v))
        ids.append(s)
    q = rng.standard_normal((len(ids), H, hd)).astype(np.float32)
    want = xsil.attention_decode(c, 0, ids, q)
    dids = np.asarray(ids, np.int32)
    for kw in (
        {},  # 512 tokens per split: one split each
        dict(split_tokens=0),  # the model's default plan (64 tokens per split, SM-count bound)
        dict(split_tokens=16, max_splits=64),  # one page per split: up to 19 splits
        dict(split_tokens=40, max_splits=3),  # capped: 3 splits of several pages
    ):
        got = cuda_ext.attention_decode(g, 0, dids, q, **kw)
        np.testing.assert_allclose(got, want, rtol=0, atol=3e-5, err_msg=str(kw))


@pytest.mark.parametrize("case", [(32, 4, 64), (32, 1, 128)], ids=["tinyllama", "mqa"])
def test_decode_gqa_long_context_many_splits(case, rng):
    H, nkv, hd = case
    T = 3000
    c, g = pair(n_kv=nkv, hd=hd, dt="f16", budget_tokens=T + 8, page_size=16)
    s = c.add_sequence()
    g.add_sequence()
    k, v = rand_kv(rng, T, nkv, hd)
    both(c, g, lambda x: x.append(s, k, v))
    q = rng.standard_normal((1, H, hd)).astype(np.float32)
    got, want = _decode_pair(c, g, [s], q, split_tokens=0)
    many, _ = _decode_pair(c, g, [s], q, split_tokens=16, max_splits=64)  # 63 splits of 3 pages
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)
    np.testing.assert_allclose(many, got, rtol=0, atol=1e-5)


def test_decode_split_plan_arguments(rng):
    c, g = pair(n_kv=1, hd=32)
    s = c.add_sequence()
    g.add_sequence()
    k, v = rand_kv(rng, 5, 1, 32)
    both(c, g, lambda x: x.append(s, k, v))
    q = rng.standard_normal((1, 4, 32)).astype(np.float32)
    with pytest.raises(ValueError, match=r"\[attention_decode\] split_tokens=-1 must be >= 0"):
        cuda_ext.attention_decode(g, 0, np.array([s], np.int32), q, split_tokens=-1)
    with pytest.raises(ValueError, match=r"\[attention_decode\] max_splits=65"):
        cuda_ext.attention_decode(g, 0, np.array([s], np.int32), q, max_splits=65)
    r = cuda_ext.bench_attention_decode(4, 1, 32, 200, "q8_0", 1)
    assert r["split_tokens"] == 64 and r["splits"] == 4 and r["ctas"] == 4 and r["us"] > 0
    with pytest.raises(ValueError, match=r"\[bench_attention_decode\] n_heads=3"):
        cuda_ext.bench_attention_decode(3, 2, 32, 200)


@pytest.mark.parametrize("dt", ["f16", "q8_0"])
def test_prefill_matches_cpu(dt, rng):
    c, g = pair(n_kv=2, hd=64, dt=dt, budget_tokens=256, page_size=8)
    s = c.add_sequence()
    g.add_sequence()
    k, v = rand_kv(rng, 50, 2, 64)
    both(c, g, lambda x: x.append(s, k, v))
    q = rng.standard_normal((37, 4, 64)).astype(np.float32)
    want = xsil.attention_prefill(c, 0, s, q)
    got = cuda_ext.attention_prefill(g, 0, s, q)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 if dt == "f16" else 2e-3)
    # the last query of a prefill is the decode of the same position
    dec = cuda_ext.attention_decode(g, 0, np.array([s], np.int32), q[-1:], split_tokens=16)
    np.testing.assert_allclose(got[-1:], dec, rtol=0, atol=1e-5)


def test_attention_argument_errors(rng):
    c, g = pair()
    s = c.add_sequence()
    g.add_sequence()
    q = rng.standard_normal((1, 4, 64)).astype(np.float32)
    with pytest.raises(ValueError, match=r"\[attention_decode\] sequence 0 is empty"):
        cuda_ext.attention_decode(g, 0, np.array([s], np.int32), q)
    k, v = rand_kv(rng, 3, 2, 64)
    g.append(s, k, v)
    with pytest.raises(ValueError, match=r"\[attention_decode\] n_heads=3"):
        cuda_ext.attention_decode(g, 0, np.array([s], np.int32), q[:, :3].copy())
    with pytest.raises(ValueError, match=r"\[attention_decode\] sequence id 0 appears twice"):
        cuda_ext.attention_decode(g, 0, np.array([s, s], np.int32), np.concatenate([q, q]))
    with pytest.raises(ValueError, match=r"\[attention_prefill\] n_q=4"):
        cuda_ext.attention_prefill(g, 0, s, np.zeros((4, 4, 64), np.float32))
    with pytest.raises(ValueError, match=r"head_dim=48 is not supported by the CUDA cache"):
        cuda_ext.KVCache(1, 1, 48, budget_tokens=64)


# -- RoPE frequency factors (GGUF rope_freqs.weight): the device copy the cache owns -------------
FF = np.r_[np.ones(12), [2.0, 3.5, 5.0, 6.5], np.full(16, 8.0)].astype(np.float32)  # head_dim 64


@pytest.mark.parametrize("dt", ["f16", "q8_0"])
@pytest.mark.parametrize("rope", ["normal", "neox"])
def test_freq_factors_write_shift_and_attention_match_cpu(dt, rope, rng):
    # K rotated with the factors on write, re-rotated with them on a context shift, q rotated with them
    # in decode and prefill: the device cache against the CPU cache (itself checked against NumPy in
    # test_kv_cache.py, where the factors move the stored keys by far more than same_rows' tolerance)
    kw = dict(n_layers=2, dt=dt, budget_tokens=64, n_ctx=48, context_shift="shift", n_keep=5, rope=rope,
              rope_freq_base=500000.0, rope_freq_factors=FF)
    c, g = pair(**kw)
    np.testing.assert_array_equal(g.rope_freq_factors, FF)
    s = c.add_sequence()
    g.add_sequence()
    for n in (30, 15, 9):
        k = rng.standard_normal((2, n, 2, 64)).astype(np.float32)
        v = rng.standard_normal((2, n, 2, 64)).astype(np.float32)
        both(c, g, lambda x: x.append(s, k, v))
    assert c.n_shifted(s) > 0
    same_books(c, g)
    same_rows(c, g, layers=2, k_exact=False)
    q = rng.standard_normal((1, 4, 64)).astype(np.float32)
    got, want = _decode_pair(c, g, [s], q)
    tol = 2e-4 if dt == "f16" else 2e-3
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * 10)
    qp = rng.standard_normal((7, 4, 64)).astype(np.float32)
    np.testing.assert_allclose(cuda_ext.attention_prefill(g, 1, s, qp), xsil.attention_prefill(c, 1, s, qp),
                               rtol=0, atol=tol * 10)


def test_freq_factors_all_ones_bit_exact_and_errors(rng):
    _, b = pair()
    _, g1 = pair(rope_freq_factors=np.ones(32, np.float32))
    for x in (g1, b):
        x.add_sequence()
    k, v = rand_kv(rng, 37, 2, 64)
    g1.append(0, k, v)
    b.append(0, k, v)
    np.testing.assert_array_equal(g1.read(0, 0)[0], b.read(0, 0)[0])
    for bad, msg in ((FF[:31], "31 given, expected head_dim / 2 = 32"), (-FF, "factor 0 must be finite and > 0")):
        errs = []
        for make in (xsil.KVCache, cuda_ext.KVCache):
            with pytest.raises(ValueError) as e:
                make(1, 2, 64, budget_tokens=64, rope_freq_factors=bad)
            errs.append(str(e.value))
        assert errs[0] == errs[1] and msg in errs[0], errs


@pytest.mark.parametrize("mode", ["normal", "neox"])
def test_rope_kernel_with_freq_factors_matches_cpu(mode, rng):
    x = rng.standard_normal((5, 3, 64)).astype(np.float32)
    pos0 = 4090
    want = xsil.rope(x, np.arange(pos0, pos0 + 5), mode=mode, freq_base=500000.0, freq_factors=FF)
    got = cuda_ext.rope(x, pos0, mode, 500000.0, 1.0, FF)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    ones = cuda_ext.rope(x, pos0, mode, 500000.0, 1.0, np.ones(32, np.float32))
    np.testing.assert_array_equal(ones, cuda_ext.rope(x, pos0, mode, 500000.0, 1.0))
    with pytest.raises(ValueError, match=r"rope frequency factors: 3 given, expected head_dim / 2 = 32"):
        cuda_ext.rope(x, pos0, mode, 500000.0, 1.0, FF[:3])
