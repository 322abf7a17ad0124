"""ONNX Runtime backends beyond the shared conformance contract: GGUF -> MatMulNBits weight
conversion, the exported graph against the float64 reference on every model shape / format mix,
option validation, the on-disk export cache, the placement report."""

import os
import sys

import numpy as np
import pytest

import xsil
from xsil import registry
from xsil.testing import reference as ref

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "model"))
from gguf_cases import MODEL_CASES, reference_case, write_model

ORACLE = os.path.join(os.path.dirname(__file__), "..", "data", "oracle", "tiny.gguf")

needs_ort = pytest.mark.skipif(
    not registry.probe("ort-cpu").available, reason=f"ort-cpu: {registry.probe('ort-cpu').reason}"
)


# -- weight conversion ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["Q4_0", "Q8_0", "Q4_K"])
def test_weight_conversion_is_exact(fmt):
    from xsil.backends.ort import weights as W

    rng = np.random.default_rng(1)
    rows = ref.random_blocks(fmt, 48, 512, rng)
    if fmt == "Q4_K":
        # a 6-bit sub-block scale of 0 (constant sub-block -dmin*m) takes the special path
        sc = rows.reshape(-1, 144)[:, 4:16]
        sc[0, 0] &= 0xC0
    want = ref.dequantize(rows, fmt, 512)
    got = W.dequant_rows(rows, fmt, 512)
    tol = 0 if fmt != "Q4_K" else 1e-6 * np.abs(want).max()  # Q4_K: fp32 rounding of the zero point
    assert np.abs(got - want).max() <= tol


@needs_ort
@pytest.mark.parametrize("fmt", ["Q4_0", "Q8_0", "Q4_K"])
def test_matmulnbits_matches_dequantized_matmul(fmt):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from xsil.backends.ort import weights as W

    rng = np.random.default_rng(2)
    N, K = 40, 512
    rows = ref.random_blocks(fmt, N, K, rng)
    d = W.nbits_rows(rows, fmt, K)
    inits = [numpy_helper.from_array(d["B"], "B"), numpy_helper.from_array(d["scales"], "S")]
    ins = ["A", "B", "S"]
    if "zero_points" in d:
        inits.append(numpy_helper.from_array(d["zero_points"], "Z"))
        ins.append("Z")
    node = helper.make_node(
        "MatMulNBits",
        ins,
        ["Y"],
        domain="com.microsoft",
        K=K,
        N=N,
        bits=W.NBITS[fmt],
        block_size=32,
        accuracy_level=0,
    )
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, N])],
        inits,
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((5, K)).astype(np.float32)
    y = s.run(None, {"A": x})[0]
    want = x.astype(np.float64) @ ref.dequantize(rows, fmt, K).T.astype(np.float64)
    assert np.abs(y - want).max() <= 1e-5 * np.abs(want).max()


# -- the exported graph against the float64 reference --------------------------------------------
# head_dim must be a multiple of 16 for GroupQueryAttention: gqa4 gets n_embd=128, gqa8_hd16 is cpu-only.
ORT_CASES = {"gqa4_q8_0": dict(n_embd=128)}
# q4_k_m_mix has Q5_K / Q6_K tensors, which the ORT backends refuse (test_ort_refuses_k_quant_mix);
# qwen3's per-head q/k norm is not exported (test_qwen3_is_refused_by_the_ort_backends).
ORT_CASE_NAMES = sorted(
    n for n in MODEL_CASES if n not in ("gqa8_hd16", "q4_k_m_mix") and MODEL_CASES[n].get("arch") != "qwen3"
)


@pytest.fixture(scope="module", params=ORT_CASE_NAMES)
def case(request, tmp_path_factory):
    overrides = ORT_CASES.get(request.param, {})
    return reference_case(request.param, tmp_path_factory.mktemp("ortmodels"), **overrides)


def _cmp(got, want):
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    return float(cos.min()), float(np.abs(got - want).max() / want.std())


@needs_ort
def test_fp32_activations_match_reference_tightly(case):
    # accuracy_level=0 and an fp32 cache: weights are converted exactly and every op runs in fp32,
    # so the graph must agree with the float64 reference to fp32 rounding
    path, toks, want = case
    with xsil.Session(
        path, backend="ort-cpu", strict=True, n_ctx=64, accuracy_level=0, kv_dtype="f32", cache=False
    ) as s:
        got = s.forward(toks)
        cos, rel = _cmp(got, want)
        assert cos >= 0.99999 and rel <= 2e-3, (cos, rel)
        s.reset()
        step = np.concatenate([s.forward(toks[i : i + 1]) for i in range(len(toks))])
        assert _cmp(step, want)[1] <= 2e-3
        s.reset()
        chunked = np.concatenate([s.forward(toks[:7]), s.forward(toks[7:])])
        assert _cmp(chunked, want)[1] <= 2e-3


@needs_ort
def test_int8_activations_close_to_reference(case):
    # accuracy_level=4 (default) quantizes activations to int8 per 32-block for Q4_0/Q8_0 weights,
    # like llama.cpp and xsil's own fast path: same tolerance as tests/model/test_models.py
    # (Q4_K weights have float zero points: ORT runs them with fp32 activations, hence as tight).
    path, toks, want = case
    with xsil.Session(path, backend="ort-cpu", strict=True, n_ctx=64, cache=False) as s:
        got = s.forward(toks)
    cos, rel = _cmp(got, want)
    assert cos >= 0.999 and rel <= 0.2, (cos, rel)


@needs_ort
def test_unsupported_head_dim_is_a_backend_error(tmp_path):
    # GroupQueryAttention needs head_dim % 16 == 0: strict raises, otherwise xsil falls back loudly
    path = write_model(str(tmp_path / "hd8.gguf"), n_head=8, n_head_kv=2)
    with pytest.raises(xsil.BackendError, match=r"head_dim=8 is not supported.*multiple of 16"):
        xsil.Session(path, backend="ort-cpu", strict=True, n_ctx=32)
    with pytest.warns(RuntimeWarning, match=r"fell back to cpu"):
        s = xsil.Session(path, backend="ort-cpu", n_ctx=32)
    assert s.describe()["backend"] == "cpu"
    s.close()


# -- options, cache, placement -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ort-cpu", "qnn", "coreml"])
def test_qwen3_is_refused_by_the_ort_backends(name):
    # supports() says so without loading anything (and without needing onnxruntime)
    from xsil.backend import ModelSpec

    b = registry.get(name)
    if b is None:
        pytest.skip(f"backend {name} not importable here: {registry.import_error(name)}")
    s = b.supports(ModelSpec("m.gguf", "qwen3", ["F32", "Q4_0"], 0, 2, 64, 320))
    assert not s.ok and "qwen3" in s.reason and "llama, qwen2" in s.reason, s.reason
    assert b.supports(ModelSpec("m.gguf", "qwen2", ["F32", "Q4_0"], 0, 2, 64, 320)).ok


@needs_ort
def test_qwen3_open_is_a_backend_error_and_falls_back_to_cpu(tmp_path):
    path = write_model(str(tmp_path / "q3.gguf"), **MODEL_CASES["qwen3_hd32"])
    with pytest.raises(xsil.BackendError, match=r"ort-cpu: architecture qwen3 is not exported"):
        xsil.Session(path, backend="ort-cpu", strict=True, n_ctx=32, cache=False)
    with pytest.warns(RuntimeWarning, match="qwen3"):
        s = xsil.Session(path, backend=["ort-cpu", "cpu"], n_ctx=32, cache=False)
    with s:
        assert s.backend_name == "cpu"
        assert s.forward([1, 2, 3]).shape == (3, 320)


@needs_ort
@pytest.mark.parametrize(
    "opt,val,match",
    [
        ("accuracy_level", 7, r"accuracy_level=7 is invalid; valid values: one of 0, 1, 2, 3, 4"),
        ("accuracy_level", "4", r"valid values"),
        ("cache", "yes", r"cache='yes' is invalid"),
        ("graph_optimization_level", "max", r"one of 'disable', 'basic', 'extended', 'all'"),
    ],
)
def test_bad_option_values_rejected(opt, val, match):
    with pytest.raises(ValueError, match=match):
        xsil.Session(ORACLE, backend="ort-cpu", strict=True, n_ctx=32, **{opt: val})


@needs_ort
def test_kv_dtype_f16_and_f32():
    # f16 (the default): attention and its cache in fp16, half the memory; f32: fp32 throughout
    o = np.load(os.path.join(os.path.dirname(ORACLE), "tiny.npz"))
    out = {}
    for kv in ("f16", "f32"):
        with xsil.Session(ORACLE, backend="ort-cpu", strict=True, n_ctx=64, kv_dtype=kv) as s:
            out[kv] = s.forward(o["tokens"][:40])
            m = s.describe()["memory"]
            assert m["kv_dtype"] == kv and s._kv[0].dtype == (np.float16 if kv == "f16" else np.float32)
            assert m["kv_bytes"] == 2 * 4 * 2 * 64 * 32 * (2 if kv == "f16" else 4)
    assert _cmp(out["f16"], out["f32"])[0] >= 0.9995  # fp16 attention: measured 0.99988


@needs_ort
def test_bad_kv_dtype_rejected():
    with pytest.raises(ValueError, match=r"kv_dtype='q4_0' is not supported; valid: f16, f32"):
        xsil.Session(ORACLE, backend="ort-cpu", strict=True, n_ctx=32, kv_dtype="q4_0")


@needs_ort
def test_export_cache_hit_on_second_open(tmp_path, monkeypatch):
    monkeypatch.setenv("XSIL_CACHE_DIR", str(tmp_path))
    with xsil.Session(ORACLE, backend="ort-cpu", strict=True, n_ctx=32) as s:
        a = s.forward([1, 5, 9])
        d1 = s.describe()["load"]
    assert d1["cache"]["hit"] is False and d1["cache"]["dir"].startswith(str(tmp_path))
    assert os.path.exists(os.path.join(d1["cache"]["dir"], "meta.json"))
    with xsil.Session(ORACLE, backend="ort-cpu", strict=True, n_ctx=32) as s:
        b = s.forward([1, 5, 9])
        d2 = s.describe()["load"]
    assert d2["cache"]["hit"] is True and d2["cache"]["dir"] == d1["cache"]["dir"]
    assert "export_cached" in d2["phases_s"]
    np.testing.assert_array_equal(a, b)
    # different export options -> a different entry
    with xsil.Session(ORACLE, backend="ort-cpu", strict=True, n_ctx=32, accuracy_level=0) as s:
        assert s.describe()["load"]["cache"]["dir"] != d1["cache"]["dir"]
    # an incomplete entry (no meta.json) is rebuilt, not trusted
    os.remove(os.path.join(d1["cache"]["dir"], "meta.json"))
    with xsil.Session(ORACLE, backend="ort-cpu", strict=True, n_ctx=32) as s:
        assert s.describe()["load"]["cache"]["hit"] is False
        np.testing.assert_array_equal(s.forward([1, 5, 9]), a)


@needs_ort
def test_placement_and_memory_report():
    with xsil.Session(ORACLE, backend="ort-cpu", strict=True, n_ctx=32) as s:
        d = s.describe()
    pl = d["placement"]
    assert pl["total_nodes"] > 0 and set(pl["nodes"]) == {"CPUExecutionProvider"}
    assert pl["ops"]["CPUExecutionProvider"]["GroupQueryAttention"] == 4
    assert d["memory"]["kv_bytes"] == 2 * 4 * 2 * 32 * 32 * 2  # 2 x layers x kv heads x n_ctx x hd x fp16
    assert d["memory"]["kv_dtype"] == "f16"
    assert d["memory"]["weight_bytes_per_token"] > 0


@needs_ort
def test_kv_cache_is_updated_in_place():
    # present_* are bound to the same buffers as past_*: a step must not reallocate them
    with xsil.Session(ORACLE, backend="ort-cpu", strict=True, n_ctx=32) as s:
        bufs = [a.__array_interface__["data"][0] for a in s._kv]
        s.forward([1, 5, 9])
        s.forward([4])
        assert [a.__array_interface__["data"][0] for a in s._kv] == bufs
        assert np.abs(s._kv[0][0, :, :4]).sum() > 0 and np.abs(s._kv[0][0, :, 4:]).sum() == 0


@needs_ort
def test_forward_last_equals_forward():
    toks = [1, 5, 9, 40, 50, 7]
    with xsil.Session(ORACLE, backend="ort-cpu", strict=True, n_ctx=32) as s:
        full = s.forward(toks)
        s.reset()
        last = s._forward_last(np.asarray(toks, np.int32))
        assert last.shape == (s.n_vocab,) and s.n_past == len(toks)
        np.testing.assert_allclose(last, full[-1], rtol=0, atol=1e-5 * float(np.abs(full).max()))


def test_importing_the_ort_backends_does_not_import_onnxruntime():
    import subprocess

    code = (
        "import sys, xsil, xsil.backends.ort; from xsil import registry; registry.probe('coreml'); "
        "print(sorted(m for m in sys.modules if m.startswith(('onnxruntime', 'onnx'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@needs_ort
def test_unwritable_cache_dir_exports_uncached(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # the cache root cannot be created under a file
    monkeypatch.setenv("XSIL_CACHE_DIR", str(tmp_path / "c"))
    from xsil.backends.ort import cache

    monkeypatch.setattr(cache, "root", lambda: str(blocker / "ort"))
    with xsil.Session(ORACLE, backend="ort-cpu", strict=True, n_ctx=32) as s:
        s.forward([1, 5, 9])
        c = s.describe()["load"]["cache"]
    assert c["enabled"] is False and c["hit"] is False and c["dir"] is None and c["error"]
