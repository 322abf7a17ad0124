"""One contract for every backend: each available backend must pass it unchanged; unavailable ones
skip with their probe's reason. Per-backend tolerances live in TOLERANCE."""

import os

import numpy as np
import pytest

import xsil
from xsil import registry

ORACLE = os.path.join(os.path.dirname(__file__), "..", "data", "oracle")
MODEL = os.path.join(ORACLE, "tiny.gguf")

# max |batch - step| logits / logit std, and minimum per-position cosine against llama.cpp
TOLERANCE = {
    "cpu": dict(batch_vs_step=0.02, cos=0.9995),
    # ort-cpu: MatMulNBits accuracy_level=4 quantizes activations to int8 per 32-block exactly as
    # llama.cpp does for Q4_0, so it is held to cpu's bounds (measured with the default f16 cache /
    # fp16 attention: cosine >= 0.99989 against llama.cpp, batch-vs-step 0 to 2e-6 of the logit std)
    "ort-cpu": dict(batch_vs_step=0.02, cos=0.9995),
    # qnn: a static QDQ graph: uint16 activations, int8 weights per output channel (requantized from
    # the Q4_0 blocks: one scale per row instead of one per 32), decode and prefill graphs calibrated
    # separately. Measured on the HTP simulator: cosine >= 0.9990, logit error ~1.5% of the logit std,
    # batch-vs-step 1.7%; the top token flips at 2 of 48 positions, exactly the two where llama.cpp's
    # own top-2 gap is smallest (2.1% and 2.3% of the logit std).
    "qnn": dict(batch_vs_step=0.05, cos=0.998, argmax_tie=0.03),
    # cuda: the same integer path as cpu (activations quantized per 32 to int8 with an fp32 scale,
    # __dp4a dots, fp16 K/V), but prefill (tiled shared-memory) and decode (split-keys) attention
    # reduce in different orders over fp16 K/V: batch vs step measured 0.025 of the logit std on an
    # H100 (2026-11-26), about llama.cpp's own batch/step gap on this model (0.021).
    "cuda": dict(batch_vs_step=0.03, cos=0.9995),
}
DEFAULT_TOL = dict(batch_vs_step=0.05, cos=0.999)


@pytest.fixture(params=registry.names())
def backend(request):
    name = request.param
    p = registry.probe(name)
    if not p.available:
        pytest.skip(f"{name}: {p.reason}")
    return name


@pytest.fixture
def session(backend):
    s = xsil.Session(MODEL, backend=backend, strict=True, n_ctx=256)
    yield s
    s.close()


def tol(backend):
    return TOLERANCE.get(backend, DEFAULT_TOL)


def test_probe_is_data_and_cheap():
    for name in registry.names():
        p = registry.probe(name, refresh=True)
        assert isinstance(p.score, int) and p.score >= 0 and isinstance(p.reason, str) and p.reason
        assert p.available == (p.score > 0)


def test_forward_shapes_and_dtype(session):
    out = session.forward([1, 5, 9])
    assert out.shape == (3, session.n_vocab) and out.dtype == np.float32
    assert session.n_past == 3


def test_batch_equals_step(session, backend):
    o = np.load(os.path.join(ORACLE, "tiny.npz"))
    toks = o["tokens"][:24]
    batch = session.forward(toks)
    session.reset()
    assert session.n_past == 0
    step = np.concatenate([session.forward(toks[i:i + 1]) for i in range(len(toks))])
    assert np.abs(batch - step).max() / batch.std() <= tol(backend)["batch_vs_step"]


def test_logits_match_llama_cpp(session, backend):
    o = np.load(os.path.join(ORACLE, "tiny.npz"))
    got = session.forward(o["tokens"])
    want = o["logits_batch"]
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= tol(backend)["cos"]
    # the top token must agree, except (for a backend with an argmax_tie tolerance) where llama.cpp's
    # own top-2 logits are closer than that fraction of the logit std
    top2 = np.sort(want, 1)[:, -2:]
    gap = (top2[:, 1] - top2[:, 0]) / want.std(1)
    flips = got.argmax(1) != want.argmax(1)
    assert (gap[flips] < tol(backend).get("argmax_tie", 0.0)).all(), (np.nonzero(flips)[0], gap[flips])


def test_generate_streams_events(session):
    events = list(session.generate("the model is", max_tokens=5))
    assert 1 <= len(events) <= 5
    for i, e in enumerate(events):
        assert isinstance(e.token_id, int) and 0 <= e.token_id < session.n_vocab
        assert isinstance(e.text, str) and e.index == i
    assert events[-1].finish_reason in ("length", "eos", "stop")
    assert all(e.finish_reason is None for e in events[:-1])


def test_greedy_is_deterministic_and_seeded_sampling_repeats(session):
    a = [e.token_id for e in session.generate([1, 40, 50], max_tokens=6)]
    session.reset()
    b = [e.token_id for e in session.generate([1, 40, 50], max_tokens=6)]
    assert a == b
    session.reset()
    c = [e.token_id for e in session.generate([1, 40, 50], max_tokens=6, temperature=0.9, top_k=40, seed=3)]
    session.reset()
    d = [e.token_id for e in session.generate([1, 40, 50], max_tokens=6, temperature=0.9, top_k=40, seed=3)]
    assert c == d


def test_stop_strings_and_tokens(session):
    first = list(session.generate([1, 40, 50], max_tokens=3))
    session.reset()
    ev = list(session.generate([1, 40, 50], max_tokens=10, stop_tokens=[first[0].token_id]))
    assert len(ev) == 1 and ev[0].finish_reason == "eos"
    session.reset()
    text = first[0].text
    if text.strip():
        ev = list(session.generate([1, 40, 50], max_tokens=10, stop=[text.strip()[:1]]))
        assert ev[-1].finish_reason == "stop" and len(ev) <= 3


def test_token_out_of_range(session):
    with pytest.raises(ValueError, match=r"token id 99999 at index 1 is out of range"):
        session.forward([1, 99999])
    with pytest.raises(ValueError, match=r"out of range"):
        session.forward([-1])
    with pytest.raises(ValueError, match=r"token_ids must be integers"):
        session.forward([1.5])
    with pytest.raises(ValueError, match=r"empty"):
        session.forward([])
    assert session.n_past == 0  # nothing was appended


def test_context_overflow(backend):
    with xsil.Session(MODEL, backend=backend, strict=True, n_ctx=32) as s:
        s.forward(list(range(1, 30)))
        with pytest.raises(xsil.ContextOverflowError, match=r"n_ctx=32|budget"):
            s.forward(list(range(1, 10)))
        assert s.n_past == 29  # unchanged by the failed call
        s.reset()
        s.forward(list(range(1, 30)))


def test_unknown_option_rejected(backend):
    with pytest.raises(ValueError, match=r"unknown option.*valid options"):
        xsil.Session(MODEL, backend=backend, strict=True, n_ctx=32, definitely_not_an_option=1)


def test_describe(session, backend):
    d = session.describe()
    for k in ("backend", "device", "placement", "memory", "load"):
        assert k in d
    assert d["backend"] == backend
    assert "phases_s" in d["load"] and d["load"]["peak_rss_bytes"] > 0


def test_close_and_context_manager(backend):
    with xsil.Session(MODEL, backend=backend, strict=True, n_ctx=32) as s:
        s.forward([1])
    with pytest.raises(ValueError, match="closed"):
        s.forward([1])
