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
    assert cos.min() >= 0.9995 and (got.argmax(1) == want.argmax(1)).all()   # fp32: as close as ort-cpu
    s.reset()
    step = np.concatenate([s.forward(o["tokens"][i:i + 1]) for i in range(20)])
    assert np.abs(step - got[:20]).max() / got.std() <= 1e-3
    d = s.describe()
    assert d["memory"]["chunks"] == {"decode": 1, "prefill": 16} and d["placement"]["complete"]
    import onnx

    for kind in ("decode", "prefill"):
        m = onnx.load(os.path.join(d["load"]["cache"]["dir"], f"{kind}.onnx"), load_external_data=False)
        assert {n.domain for n in m.graph.node} == {""}                     # standard ops only for Core ML
        assert "SimplifiedLayerNormalization" not in {n.op_type for n in m.graph.node}
    s.close()
