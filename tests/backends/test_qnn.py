"""`qnn` beyond the conformance contract: every node on the HTP backend under strict=True, greedy
agreement with `cpu`, the honest simulator probe, the EP context cache, the partial-placement
warning, option validation. Runs on the onnxruntime-qnn HTP simulator (Linux x86_64) with the tiny
oracle model; skipped where the backend is unavailable."""

import os
import platform

import numpy as np
import pytest

import xsil
from xsil import registry
from xsil.select import choose

ORACLE = os.path.join(os.path.dirname(__file__), "..", "data", "oracle")
MODEL = os.path.join(ORACLE, "tiny.gguf")

pytestmark = pytest.mark.skipif(
    not registry.probe("qnn").available, reason=f"qnn: {registry.probe('qnn').reason}"
)


def test_probe_reports_the_simulator_and_auto_never_prefers_it(monkeypatch):
    p = registry.probe("qnn")
    assert p.score < registry.probe("cpu").score
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert p.devices[0].name == "HTP (x86_64 simulator)" and "SIMULATOR" in p.reason
    monkeypatch.delenv("XSIL_BACKEND", raising=False)
    assert choose("auto").candidates[0] == "cpu"


def test_strict_puts_every_node_on_qnn_and_greedy_agrees_with_cpu():
    o = np.load(os.path.join(ORACLE, "tiny.npz"))
    with xsil.Session(MODEL, backend="qnn", strict=True, n_ctx=64) as s:
        pl = s.describe()["placement"]
        assert pl["complete"]
        for kind in ("decode", "prefill"):
            assert (
                set(pl[kind]["nodes"]) == {"QNNExecutionProvider"} and pl[kind]["accelerator_fraction"] == 1.0
            )
        with xsil.Session(MODEL, backend="cpu", n_ctx=64) as c:
            for prompt in (list(o["tokens"][:8]), [1, 40, 50]):
                s.reset()
                c.reset()
                a = [e.token_id for e in s.generate(prompt, max_tokens=16)]
                b = [e.token_id for e in c.generate(prompt, max_tokens=16)]
                assert a == b


def test_chunked_prefill_matches_one_call():
    o = np.load(os.path.join(ORACLE, "tiny.npz"))
    toks = o["tokens"][:20]
    with xsil.Session(MODEL, backend="qnn", strict=True, n_ctx=64) as s:
        whole = s.forward(toks)  # one full prefill chunk (16) + a padded one (4)
        s.reset()
        parts = np.concatenate([s.forward(toks[:7]), s.forward(toks[7:8]), s.forward(toks[8:])])
    assert np.abs(whole - parts).max() / whole.std() <= 0.05


def test_ep_context_cache_hit_on_second_open(tmp_path, monkeypatch):
    monkeypatch.setenv("XSIL_CACHE_DIR", str(tmp_path))
    with xsil.Session(MODEL, backend="qnn", strict=True, n_ctx=32) as s:
        a = s.forward([1, 5, 9])
        first = s.describe()["load"]
    assert first["cache"]["hit"] is False and first["cache"]["decode_ep_context_hit"] is False
    entry = first["cache"]["dir"]
    assert os.path.exists(os.path.join(entry, "decode_ctx.onnx")) and os.path.exists(
        os.path.join(entry, "prefill_ctx.ok")
    )
    with xsil.Session(MODEL, backend="qnn", strict=True, n_ctx=32) as s:
        b = s.forward([1, 5, 9])
        second = s.describe()["load"]
    assert second["cache"]["hit"] is True
    assert (
        second["cache"]["decode_ep_context_hit"] is True and second["cache"]["prefill_ep_context_hit"] is True
    )
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * float(np.abs(a).max()))
    # a different context length is a different static graph -> a different entry
    with xsil.Session(MODEL, backend="qnn", strict=True, n_ctx=48) as s:
        assert s.describe()["load"]["cache"]["dir"] != entry


def test_partial_placement_warns_and_strict_refuses(tmp_path, monkeypatch):
    # int16 weights: the HTP backend rejects 16x16-bit MatMul with a weight initializer, so those
    # nodes can only run on ORT's CPU EP
    monkeypatch.setenv("XSIL_CACHE_DIR", str(tmp_path))
    with pytest.raises(xsil.BackendError, match=r"fallback to CPU EP has been explicitly disabled"):
        xsil.Session(MODEL, backend="qnn", strict=True, n_ctx=16, weight_type="int16")
    with pytest.warns(RuntimeWarning, match=r"QNNExecutionProvider took only \d+% of the decode graph"):
        s = xsil.Session(MODEL, backend="qnn", n_ctx=16, weight_type="int16")
    pl = s.describe()["placement"]
    assert not pl["complete"] and "CPUExecutionProvider" in pl["decode"]["nodes"]
    s.close()


@pytest.mark.parametrize(
    "opt,val,match",
    [
        ("prefill_chunk", 1, r"prefill_chunk=1 is invalid; valid values: an int in \[2, 512\]"),
        ("weight_type", "int3", r"one of 'int8', 'int4', 'int16'"),
        ("htp_performance_mode", "turbo", r"'burst'"),
        ("accuracy_level", 4, r"unknown option\(s\) accuracy_level; valid options: .*prefill_chunk"),
    ],
)
def test_option_table(opt, val, match):
    with pytest.raises(ValueError, match=match):
        xsil.Session(MODEL, backend="qnn", strict=True, n_ctx=16, **{opt: val})
