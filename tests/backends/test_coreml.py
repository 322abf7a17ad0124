"""`coreml`: the probe is honest where Core ML cannot exist, and its static float graph + chunked
session are checked on ORT's CPU provider (the CoreML EP itself needs macOS)."""

import os
import sys

import numpy as np
import pytest

import xsil
from xsil import registry

ORACLE = os.path.join(os.path.dirname(__file__), "..", "data", "oracle")
MODEL = os.path.join(ORACLE, "tiny.gguf")


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the non-macOS probe")
def test_probe_unavailable_off_macos():
    p = registry.probe("coreml", refresh=True)
    assert not p.available and "Apple-only" in p.reason and "macOS" in p.reason
    with pytest.raises(xsil.BackendError, match="Apple-only"):
        xsil.Session(MODEL, backend="coreml", strict=True, n_ctx=32)


@pytest.mark.skipif(not registry.probe("ort-cpu").available, reason="needs onnxruntime")
def test_static_graph_on_the_cpu_provider(tmp_path, monkeypatch):
    from xsil.backend import Probe
    from xsil.backends.ort.coreml import CoreMLBackend

    class OnCpu(CoreMLBackend):
        name = "coreml-on-cpu"
        provider = "CPUExecutionProvider"

        def _probe(self):
            return Probe(1, "test: the coreml graph on ORT's CPU EP")

    monkeypatch.setenv("XSIL_CACHE_DIR", str(tmp_path))
    o = np.load(os.path.join(ORACLE, "tiny.npz"))
    s = OnCpu().open(MODEL, n_ctx=64, strict=True, prefill_chunk=16)
    got = s.forward(o["tokens"][:40])
    want = o["logits_batch"][:40]
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9995 and (got.argmax(1) == want.argmax(1)).all()  # fp32: as close as ort-cpu
    s.reset()
    step = np.concatenate([s.forward(o["tokens"][i : i + 1]) for i in range(20)])
    assert np.abs(step - got[:20]).max() / got.std() <= 1e-3
    d = s.describe()
    assert d["memory"]["chunks"] == {"decode": 1, "prefill": 16} and d["placement"]["complete"]
    import onnx

    for kind in ("decode", "prefill"):
        m = onnx.load(os.path.join(d["load"]["cache"]["dir"], f"{kind}.onnx"), load_external_data=False)
        assert {n.domain for n in m.graph.node} == {""}  # standard ops only for Core ML
        assert "SimplifiedLayerNormalization" not in {n.op_type for n in m.graph.node}
    s.close()


@pytest.mark.skipif(not registry.probe("ort-cpu").available, reason="needs onnxruntime")
@pytest.mark.parametrize("case", ["qwen2_biases", "llama_hd8_tied_mix", "llama3_rope_freqs"])
def test_static_graph_matches_reference(case, tmp_path, monkeypatch):
    # the static graph's RoPE (llama rows permuted to split halves; qwen2 as is), biases, GQA grouping
    # and any head_dim, against the float64 reference
    from xsil.backend import Probe
    from xsil.backends.ort.coreml import CoreMLBackend
    from xsil.model.gguf import GGUFFile
    from xsil.testing.forward_ref import ReferenceModel

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "model"))
    from gguf_cases import write_model

    class OnCpu(CoreMLBackend):
        name = "coreml-on-cpu"
        provider = "CPUExecutionProvider"

        def _probe(self):
            return Probe(1, "test")

    kw = {
        "qwen2_biases": dict(arch="qwen2", biases=True, n_head=4, n_head_kv=2, rope_base=1000000.0),
        "llama_hd8_tied_mix": dict(n_head=8, n_head_kv=2, tied=True, mix={"ffn_down": "Q8_0", "attn_v": "F16"}),
        # per-pair frequency factors in the cos/sin tables (llama pairs permuted to split halves)
        "llama3_rope_freqs": dict(n_embd=128, n_head=4, n_head_kv=2, rope_base=500000.0, rope_freqs="llama3"),
    }[case]
    path = write_model(str(tmp_path / f"{case}.gguf"), seed=5, **kw)
    monkeypatch.setenv("XSIL_CACHE_DIR", str(tmp_path / "cache"))
    toks = np.random.default_rng(3).integers(3, 300, size=21).astype(np.int32)
    want = ReferenceModel(GGUFFile(path)).forward(toks)
    s = OnCpu().open(path, n_ctx=32, prefill_chunk=8)
    got = s.forward(toks)
    s.close()
    assert np.abs(got - want).max() / want.std() <= 2e-3


@pytest.mark.skipif(not registry.probe("ort-cpu").available, reason="needs onnxruntime")
def test_static_forward_last(tmp_path, monkeypatch):
    from xsil.backend import Probe
    from xsil.backends.ort.coreml import CoreMLBackend

    class OnCpu(CoreMLBackend):
        name = "coreml-on-cpu"
        provider = "CPUExecutionProvider"

        def _probe(self):
            return Probe(1, "test")

    monkeypatch.setenv("XSIL_CACHE_DIR", str(tmp_path))
    with OnCpu().open(MODEL, n_ctx=32, prefill_chunk=4) as s:
        full = s.forward([1, 5, 9, 40, 50])
        s.reset()
        np.testing.assert_array_equal(s._forward_last(np.array([1, 5, 9, 40, 50], np.int32)), full[-1])
