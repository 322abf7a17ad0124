"""Randomized: interleave appends, forks, truncates and removes across sequences; after every step
the page accounting is consistent (no page leaked, none shared wrongly) and at the end every
sequence's attention equals the reference computed from the tokens it should hold."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xsil
from xsil.testing import attention_ref as R

from _attn_util import assert_close

NKV, HD, H, PS, BUDGET = 2, 32, 4, 4, 96

op = st.one_of(
    st.tuples(st.just("add")),
    st.tuples(st.just("append"), st.integers(0, 7), st.integers(1, 9)),
    st.tuples(st.just("fork"), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 7), st.floats(0, 1)),
    st.tuples(st.just("remove"), st.integers(0, 7)),
)


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


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=30), seed=st.integers(0, 2**16),
       dt=st.sampled_from(["f32", "f16", "q8_0"]))
def test_random_page_table_ops(ops, seed, dt):
    rng = np.random.default_rng(seed)
    tiers = xsil.cpu_info()["available_tiers"]
    c = xsil.KVCache(1, NKV, HD, page_size=PS, k_dtype=dt, v_dtype=dt, budget_tokens=BUDGET)
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
            try:
                c.append(sid, k, v)
            except ValueError as e:
                assert "budget of 96 tokens exhausted" in str(e)
                assert c.stats() == before
                continue
            model[sid] = (np.concatenate([model[sid][0], k]), np.concatenate([model[sid][1], v]))
        elif o[0] == "fork":
            sid = ids[o[1] % len(ids)]
            model[c.fork(sid)] = model[sid]
        elif o[0] == "truncate":
            sid = ids[o[1] % len(ids)]
            n = int(len(model[sid][0]) * o[2])
            c.truncate(sid, n)
            model[sid] = (model[sid][0][:n], model[sid][1][:n])
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
        assert_close(got[i:i + 1], want, R.store(v, dt), dt, dt, 3.0, f"seq {sid}")
        # stored contents too
        K, V = c.read(0, sid)
        np.testing.assert_allclose(V, R.store(v, dt), atol=R.quantum(v, dt).max() * 1.01 + 1e-7)
