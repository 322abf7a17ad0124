"""Randomized: interleave appends, forks, truncates and removes across sequences; after every step
the page accounting is consistent (no page leaked, none shared wrongly) and at the end every
sequence's attention equals the reference computed from the tokens it should hold."""

import os

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import xsil
from xsil.testing import attention_ref as R

from _attn_util import assert_close

NKV, HD, H, PS, BUDGET = 2, 32, 4, 4, 40

op = st.one_of(
    st.tuples(st.just("add")),
    st.tuples(st.just("append"), st.integers(0, 7), st.integers(1, 12)),
    st.tuples(st.just("append"), st.integers(0, 7), st.integers(1, 12)),
    st.tuples(st.just("fork"), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 7), st.floats(0, 1)),
    st.tuples(st.just("remove"), st.integers(0, 7)),
    st.tuples(st.just("shift"), st.integers(0, 7), st.floats(0, 1)),
)
N_KEEP = 2


def drop(model_seq, d):
    """The tokens a context shift of d keeps: the first N_KEEP, then everything after the dropped ones."""
    k, v = model_seq
    return (np.concatenate([k[:N_KEEP], k[N_KEEP + d:]]), np.concatenate([v[:N_KEEP], v[N_KEEP + d:]]))


def check_pages(c, model):
    assert c.check() == ""
    s = c.stats()
    tables = {sid: c.page_table(sid) for sid in model}
    distinct = set(p for t in tables.values() for p in t)
    assert s["pages_used"] == len(distinct)
    assert s["refs_total"] == sum(len(t) for t in tables.values())
    assert s["pages_used"] + s["pages_free"] == s["pages_total"]
    for sid, toks in model.items():
        assert c.length(sid) == len(toks[0])
        assert len(tables[sid]) == -(-len(toks[0]) // PS)
    for p in distinct:
        assert c.refcount(p) == sum(t.count(p) for t in tables.values())


@settings(max_examples=int(os.environ.get("XSIL_HYPOTHESIS_EXAMPLES", "100")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=8, max_size=40), seed=st.integers(0, 2**16),
       dt=st.sampled_from(["f32", "f16", "q8_0"]))
def test_random_page_table_ops(ops, seed, dt):
    rng = np.random.default_rng(seed)
    tiers = xsil.cpu_info()["available_tiers"]
    # f32 caches run with context shift on (a full pool shifts the appending sequence; "shift" ops
    # shift by hand): re-rotated f32 keys match the reference to float32 accuracy. f16 / q8_0 caches
    # raise on a full pool (their re-rotation error has its own test in test_kv_cache.py).
    shifting = dt == "f32"
    c = xsil.KVCache(1, NKV, HD, page_size=PS, k_dtype=dt, v_dtype=dt, budget_tokens=BUDGET,
                     context_shift="shift" if shifting else "error", n_keep=N_KEEP)
    model = {}  # sid -> (k_raw [T, NKV, HD], v_raw)
    empty = (np.zeros((0, NKV, HD), np.float32), np.zeros((0, NKV, HD), np.float32))
    for o in ops:
        ids = sorted(model)
        if o[0] == "add" or not ids:
            model[c.add_sequence()] = empty
        elif o[0] == "append":
            sid = ids[o[1] % len(ids)]
            k = rng.standard_normal((o[2], NKV, HD)).astype(np.float32)
            v = rng.standard_normal((o[2], NKV, HD)).astype(np.float32)
            before = c.stats()
            shifted = c.n_shifted(sid)
            try:
                c.append(sid, k, v)
            except ValueError as e:
                assert "budget of 40 tokens exhausted" in str(e) or "past n_ctx=40" in str(e)
                event("append: budget exhausted")
                if c.n_shifted(sid) != shifted:  # a shift ran, then the pool was still too small
                    model[sid] = drop(model[sid], c.n_shifted(sid) - shifted)
                else:
                    assert c.stats() == before
                check_pages(c, model)
                continue
            if c.n_shifted(sid) != shifted:
                event("append: context shift on a full pool")
                assert shifting
                model[sid] = drop(model[sid], c.n_shifted(sid) - shifted)
            model[sid] = (np.concatenate([model[sid][0], k]), np.concatenate([model[sid][1], v]))
        elif o[0] == "fork":
            sid = ids[o[1] % len(ids)]
            model[c.fork(sid)] = model[sid]
            event("fork")
        elif o[0] == "truncate":
            sid = ids[o[1] % len(ids)]
            n = int(len(model[sid][0]) * o[2])
            c.truncate(sid, n)
            model[sid] = (model[sid][0][:n], model[sid][1][:n])
        elif o[0] == "shift":
            sid = ids[o[1] % len(ids)]
            room = len(model[sid][0]) - N_KEEP
            if not shifting or room < 1:
                continue
            d = 1 + int((room - 1) * o[2])
            try:
                c.shift(sid, d)
            except ValueError as e:  # shared pages to copy and no free page
                assert "budget of 40 tokens exhausted" in str(e)
                check_pages(c, model)
                continue
            model[sid] = drop(model[sid], d)
            event("manual shift")
        elif o[0] == "remove":
            sid = ids[o[1] % len(ids)]
            c.remove_sequence(sid)
            del model[sid]
        check_pages(c, model)
    live = [sid for sid in sorted(model) if len(model[sid][0])]
    if not live:
        return
    q = rng.standard_normal((len(live), H, HD)).astype(np.float32)
    tier = tiers[seed % len(tiers)]
    got = xsil.attention_decode(c, 0, live, q, isa=tier, threads=1 + seed % 2)
    for i, sid in enumerate(live):
        k, v = model[sid]
        want = R.cached_attention(q[i:i + 1], k, v, dt, dt, [len(k) - 1])
        # Outputs here are tiny (4 heads x 32): one K element landing on the other side of an f16 /
        # Q8_0 rounding boundary moves a whole head's outputs, so only the format bound applies.
        assert_close(got[i:i + 1], want, R.store(v, dt), dt, dt, 3.0, f"seq {sid}", max_frac=1.0)
        # stored contents too
        K, V = c.read(0, sid)
        np.testing.assert_allclose(V, R.store(v, dt), atol=R.quantum(v, dt).max() * 1.01 + 1e-7)
