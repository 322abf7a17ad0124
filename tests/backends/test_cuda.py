"""The cuda backend: probe/options checks that run everywhere; the model checks need a GPU and skip
with the probe's reason elsewhere."""

import os
import sys

import numpy as np
import pytest

import xsil
from xsil import registry
from xsil.backend import ModelSpec
from xsil.errors import BackendError, ContextOverflowError

ORACLE = os.path.join(os.path.dirname(__file__), "..", "data", "oracle")
MODEL = os.path.join(ORACLE, "tiny.gguf")


def _backend():
    from xsil.backends.cuda import CudaBackend

    return CudaBackend()


def test_probe_is_data_and_names_the_reason():
    p = _backend().probe()
    assert isinstance(p.score, int) and p.reason
    if p.score == 0:
        assert any(
            w in p.reason
            for w in ("not built", "no CUDA driver", "no device", "driver", "compute capability", "CUDA")
        ), p.reason
    else:
        assert p.devices and p.devices[0].kind == "gpu"


def test_registry_lists_cuda_with_the_probe_reason():
    assert "cuda" in registry.names()
    p = registry.probe("cuda", refresh=True)
    assert p.reason == _backend().probe().reason


def test_import_xsil_does_not_import_the_extension():
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", "import sys, xsil; print('xsil._cuda' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[-1] == "False"


def test_options_validation_before_any_device_work():
    b = _backend()
    assert "device" in b.options()
    with pytest.raises(ValueError, match="unknown option"):
        b.open(MODEL, bogus=1)
    with pytest.raises(ValueError, match="kv_dtype"):
        b.open(MODEL, kv_dtype="q4_0")
    with pytest.raises(ValueError, match="page_size"):
        b.open(MODEL, page_size=0)
    with pytest.raises(ValueError, match="kv_budget_tokens"):
        b.open(MODEL, kv_budget_tokens=-1)
    with pytest.raises(ValueError, match="device"):
        b.open(MODEL, device=-1)
    with pytest.raises(ValueError, match="n_ctx"):
        b.open(MODEL, n_ctx=0)
    with pytest.raises(ValueError, match="cuda_graphs"):
        b.open(MODEL, cuda_graphs="yes")


def test_open_without_gpu_raises_with_the_reason():
    b = _backend()
    p = b.probe()
    if p.available:
        pytest.skip("a GPU is present")
    with pytest.raises(BackendError, match="cuda"):
        b.open(MODEL)


def test_supports_lists_the_types():
    b = _backend()
    ok = ModelSpec(MODEL, "llama", ["F32", "Q4_0", "Q8_0", "Q4_K"], 1, 1, 1, 1)
    assert b.supports(ok).ok
    kq = ["F32", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]
    assert b.supports(ModelSpec(MODEL, "llama", kq, 1, 1, 1, 1)).ok
    bad = b.supports(ModelSpec(MODEL, "llama", ["F32", "Q2_K"], 1, 1, 1, 1))
    assert not bad.ok and "Q2_K" in bad.reason and "Q6_K" in bad.reason
    assert not b.supports(ModelSpec(MODEL, "gpt2", ["F32"], 1, 1, 1, 1)).ok


gpu = pytest.mark.skipif(
    not registry.probe("cuda").available, reason=f"cuda: {registry.probe('cuda').reason}"
)

# timing tests make no sense on the CPU emulator (tests/cuda_emu)
real_gpu = pytest.mark.skipif(
    not registry.probe("cuda").available or "emulator" in registry.probe("cuda").reason,
    reason="needs a real GPU",
)


@gpu
def test_session_matches_cpu():
    o = np.load(os.path.join(ORACLE, "tiny.npz"))
    toks = o["tokens"]
    with (
        xsil.Session(MODEL, backend="cpu", n_ctx=256) as c,
        xsil.Session(MODEL, backend="cuda", n_ctx=256) as g,
    ):
        a = c.forward(toks)
        b = g.forward(toks)
        assert g.n_past == len(toks)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > 0.9995
        assert np.abs(a - b).max() / a.std() < 0.02
        d = g.describe()
        assert d["backend"] == "cuda" and d["memory"]["weight_bytes"] > 0


@gpu
def test_graph_decode_equals_plain_decode():
    o = np.load(os.path.join(ORACLE, "tiny.npz"))
    toks = o["tokens"][:20]
    outs = []
    for graphs in (True, False):
        with xsil.Session(MODEL, backend="cuda", n_ctx=64, cuda_graphs=graphs) as g:
            g.forward(toks[:4])
            outs.append(np.concatenate([g.forward(toks[i : i + 1]) for i in range(4, len(toks))]))
    np.testing.assert_array_equal(outs[0], outs[1])


@gpu
def test_context_overflow_and_reset():
    with xsil.Session(MODEL, backend="cuda", n_ctx=8) as g:
        g.forward(list(range(1, 9)))
        with pytest.raises(ContextOverflowError):
            g.forward([1])
        assert g.n_past == 8
        g.reset()
        assert g.n_past == 0
        assert g.forward([1, 2]).shape[0] == 2


@gpu
def test_generate_is_deterministic():
    with xsil.Session(MODEL, backend="cuda", n_ctx=64) as g:
        a = [e.token_id for e in g.generate([1, 5, 9], max_tokens=8)] if hasattr(g, "generate") else []
        g.reset()
        b = [e.token_id for e in g.generate([1, 5, 9], max_tokens=8)] if hasattr(g, "generate") else []
        assert a == b


def test_native_model_rejects_unsupported_types_before_touching_a_device():
    from xsil.backends.cuda import _load_ext

    cuda_ext, why = _load_ext()
    if cuda_ext is None:
        pytest.skip(why)
    from xsil.backends.cuda import load_weights
    from xsil.model.gguf import GGUFFile
    from xsil.model.llama import LlamaConfig

    g = GGUFFile(MODEL)
    cfg = LlamaConfig.from_gguf(g)
    w = load_weights(g, cfg)
    arr, _, rows, cols = w["blk.0.attn_q.weight"]
    w["blk.0.attn_q.weight"] = (arr, "Q2_K", rows, cols)
    with pytest.raises(
        ValueError, match=r"blk\.0\.attn_q\.weight has type Q2_K; the CUDA backend supports .*Q6_K"
    ):
        cuda_ext.LlamaModel(cfg.as_core(), w, 64, 0)
    # a supported type whose data does not have that type's size
    w["blk.0.attn_q.weight"] = (arr, "Q6_K", rows, cols)
    want = rows * cols // 256 * 210
    with pytest.raises(ValueError, match=rf"blk\.0\.attn_q\.weight has \d+ bytes, expected {want}"):
        cuda_ext.LlamaModel(cfg.as_core(), w, 64, 0)


@gpu
@pytest.mark.parametrize("arch,wtype", [("llama", "Q8_0"), ("qwen2", "Q4_0")])
def test_synthetic_models_match_cpu(tmp_path, arch, wtype):
    # Q8_0 matrices and neox RoPE (qwen2), each against the cpu backend
    from xsil.model.default import SyntheticSpec, write_synthetic

    spec = SyntheticSpec(
        name=f"t-{arch}-{wtype}",
        n_embd=256,
        n_layer=2,
        n_head=4,
        n_head_kv=2,
        n_ff=512,
        n_vocab=512,
        arch=arch,
        weight_type=wtype,
    )
    path = str(tmp_path / "m.gguf")
    write_synthetic(path, spec)
    toks = list(range(1, 30))
    with xsil.Session(path, backend="cpu", n_ctx=64) as c, xsil.Session(path, backend="cuda", n_ctx=64) as g:
        a = c.forward(toks)
        b = g.forward(toks)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999, cos.min()
    assert np.abs(a - b).max() / a.std() < 0.05


@real_gpu
def test_bench_gemv_reports_bandwidth():
    from xsil.backends.cuda import _load_ext

    _cuda, _ = _load_ext()
    r = _cuda.bench_gemv("Q4_0", 4096, 4096, 5)
    assert r["gemv_GBps"] > 0 and r["copy_GBps"] > 0 and r["bytes"] == 4096 * 4096 // 2 + 4096 * 128 * 2


@gpu
@pytest.mark.parametrize("case,overrides", [("q4_k_mix", {}), ("q4_k_mix", dict(mix=None, tied=True))])
def test_q4_k_models_match_cpu_and_reference(tmp_path, case, overrides):
    # Q4_K matrices (stacked QKV and gate|up), Q8_0 or (tied) Q4_K embedding / output; the 21-token
    # prefill runs the tensor-core GEMM (M >= 16) and, with it switched off, the dp4a GEMM; decode the
    # GEMV. Bounds: tests/model/test_models.py's for Q4_K (cosine >= 0.99, max error <= 0.5 of the logit
    # std against the float64 reference: tiny random models through peaked attention). Measured on the
    # CPU emulator: cpu 0.9954 / 0.9940, cuda 0.9966 / 0.9917; cuda vs cpu 0.993 / 0.994; mma vs dp4a
    # prefill within fp32 rounding. Batch vs step: 5e-6 of the logit std with the contiguous KV cache,
    # 0.074 with the paged one (rows at positions >= 20 only, the same with mma on or off: decode and
    # prefill attention reduce in different orders and int8 activation rounding amplifies it here).
    from xsil.backends.cuda import _load_ext

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "model"))
    from gguf_cases import reference_case

    path, toks, ref = reference_case(case, tmp_path, **overrides)
    ext, _ = _load_ext()
    with xsil.Session(path, backend="cpu", n_ctx=64) as c, xsil.Session(path, backend="cuda", n_ctx=64) as g:
        a = c.forward(toks)
        b = g.forward(toks)
        assert g.describe()["mma_gemm"].startswith("on")
        g.reset()
        step = np.concatenate([g.forward(toks[i : i + 1]) for i in range(len(toks))])
        g.reset()
        ext.set_mma(False)
        try:
            b_dp4a = g.forward(toks)
            assert g.describe()["mma_gemm"].startswith("off")
        finally:
            ext.set_mma(True)

    def cos(x, y):
        return float(((x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)).min())

    for got in (a, b, step):
        assert cos(got, ref) >= 0.99 and np.abs(got - ref).max() / ref.std() <= 0.5
    assert cos(a, b) >= 0.99 and np.abs(a - b).max() / a.std() < 0.5
    assert np.abs(b - step).max() / b.std() < 0.15
    assert np.abs(b - b_dp4a).max() / b.std() < 1e-3


# llama.cpp-like mixes of the formats beyond Q4_0 / Q8_0 / Q4_K (MODEL_CASES["q4_k_m_mix"] and
# overrides of it): Q4_K_M (Q4_K matrices, Q6_K output / ffn_down, a Q5_K attn_v: QKV unstacked,
# Q4_K embedding), Q5_K_M-like (stacked Q5_K QKV and gate|up, Q5_K embedding), all Q6_K (stacked
# Q6_K, Q6_K embedding) and the legacy formats (stacked Q5_0 QKV, unstacked Q5_1 / Q4_1 gate|up,
# Q4_1 embedding, Q5_1 output).
KQ_MIXES = {
    "q4_k_m": {},
    "q5_k_m": dict(wtype="Q5_K", mix={"ffn_down": "Q6_K", "=output.weight": "Q6_K"}),
    "q6_k": dict(wtype="Q6_K", mix=None),
    "legacy": dict(wtype="Q5_0", mix={"ffn_up": "Q5_1", "ffn_gate": "Q4_1", "ffn_down": "Q4_1",
                                      "token_embd": "Q4_1", "=output.weight": "Q5_1"}),
}


@gpu
@pytest.mark.parametrize("mix", list(KQ_MIXES))
def test_k_quant_mixes_match_cpu_and_reference(tmp_path, mix):
    # As test_q4_k_models_match_cpu_and_reference, with the same bounds (cosine >= 0.99, max error
    # <= 0.5 of the logit std against the float64 reference); the 21-token prefill runs the tensor-core
    # GEMM (every block type has one) and, with it switched off, the dp4a GEMM. Measured on the CPU
    # emulator, min cosine / max error over the reference's std:
    #   mix     cpu vs ref      cuda vs ref     cuda vs cpu     step vs batch  dp4a vs mma prefill
    #   q4_k_m  0.9964 / 0.262  0.9980 / 0.200  0.9954 / 0.289  3.4e-3         3.4e-3
    #   q5_k_m  0.9967 / 0.259  0.9979 / 0.215  0.9955 / 0.314  5.0e-2         4.6e-2
    #   q6_k    0.9971 / 0.231  0.9979 / 0.233  0.9952 / 0.357  2.8e-2         2.8e-2
    #   legacy  0.9980 / 0.204  0.9980 / 0.204  1.0000 / 0.025  4.0e-2         4.0e-2
    # Step vs batch and mma vs dp4a: most rows agree to < 1e-6 of the std, a few differ by the amounts
    # above (different fp32 orders flip int8 activation roundings downstream, as in the Q4_K test); the
    # kernels alone agree bitwise / to 2e-6 (tests/kernels/test_cuda_kernels.py).
    from xsil.backends.cuda import _load_ext

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "model"))
    from gguf_cases import reference_case

    path, toks, ref = reference_case("q4_k_m_mix", tmp_path, **KQ_MIXES[mix])
    ext, _ = _load_ext()
    with xsil.Session(path, backend="cpu", n_ctx=64) as c, xsil.Session(path, backend="cuda", n_ctx=64) as g:
        a = c.forward(toks)
        b = g.forward(toks)
        assert g.describe()["mma_gemm"].startswith("on")  # every type's self-check passed at load
        g.reset()
        step = np.concatenate([g.forward(toks[i : i + 1]) for i in range(len(toks))])
        g.reset()
        ext.set_mma(False)
        try:
            b_dp4a = g.forward(toks)
        finally:
            ext.set_mma(True)

    def cos(x, y):
        return float(((x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)).min())

    def err(x, y):
        return float(np.abs(x - y).max() / y.std())

    for got in (a, b, step):
        assert cos(got, ref) >= 0.99 and err(got, ref) <= 0.5
    assert cos(a, b) >= 0.99 and err(b, a) < 0.5
    assert err(step, b) < 0.15
    assert err(b_dp4a, b) < 0.15


@gpu
@pytest.mark.parametrize("case", ["qwen3_hd32", "qwen3_gqa4_q8_0", "llama_hd32_wide", "llama3_rope_freqs"])
def test_qwen3_and_wide_head_models_match_cpu_and_reference(tmp_path, case):
    # qwen3: per-head q/k RMSNorm (the rms_norm kernel over rows = tokens x heads) before neox RoPE;
    # all three have head_dim 32 from key_length with n_head * head_dim = 2 * n_embd (q/k/v wider than
    # the residual stream, attn_output [n_embd, n_head * head_dim]); GQA 2:1 and 4:1; a tied Q8_0
    # output; llama3_rope_freqs: per-pair RoPE frequency factors (the device copy the cache owns). Prefill (21 tokens: the tensor-core GEMM), decode step by step (the CUDA graph), against
    # the cpu backend and the float64 reference with tests/model/test_models.py's bounds.
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "model"))
    from gguf_cases import reference_case

    path, toks, ref = reference_case(case, tmp_path)
    with xsil.Session(path, backend="cpu", n_ctx=64) as c, xsil.Session(path, backend="cuda", n_ctx=64) as g:
        assert g.backend_name == "cuda" and g.config.qk_norm == case.startswith("qwen3") and g.config.head_dim == 32
        assert (g.config.rope_freq_factors is not None) == (case == "llama3_rope_freqs")
        a = c.forward(toks)
        b = g.forward(toks)
        g.reset()
        step = np.concatenate([g.forward(toks[i : i + 1]) for i in range(len(toks))])

    def cos(x, y):
        return float(((x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)).min())

    for got in (a, b, step):
        assert cos(got, ref) >= 0.999 and np.abs(got - ref).max() / ref.std() <= 0.2, (cos(got, ref), case)
    assert cos(a, b) >= 0.999 and np.abs(a - b).max() / a.std() < 0.2
    assert np.abs(b - step).max() / b.std() < 0.15


@gpu
def test_q8_0_kv_cache_matches_cpu():
    o = np.load(os.path.join(ORACLE, "tiny.npz"))
    toks = o["tokens"]
    with (
        xsil.Session(MODEL, backend="cpu", n_ctx=256, kv_dtype="q8_0") as c,
        xsil.Session(MODEL, backend="cuda", n_ctx=256, kv_dtype="q8_0") as g,
    ):
        a = c.forward(toks)
        b = g.forward(toks)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > 0.999
        m = g.describe()["memory"]
        assert m["kv_dtype"] == "q8_0" and m["kv_layout"] == "paged"
        assert m["kv_cache"]["budget_tokens"] == 256


@gpu
def test_truncate_then_decode_equals_a_fresh_run():
    # pages of 4 tokens: the decode crosses page boundaries and truncate drops whole pages
    o = np.load(os.path.join(ORACLE, "tiny.npz"))
    toks = o["tokens"][:14]
    with xsil.Session(MODEL, backend="cuda", n_ctx=32, page_size=4) as g:
        g.forward(toks[:10])
        g.native.truncate(5)
        assert g.n_past == 5
        a = np.concatenate([g.forward(toks[i : i + 1]) for i in range(5, 14)])
        g.reset()
        g.forward(toks[:5])
        b = np.concatenate([g.forward(toks[i : i + 1]) for i in range(5, 14)])
    np.testing.assert_array_equal(a, b)


@gpu
def test_budget_smaller_than_n_ctx_overflows_cleanly():
    with xsil.Session(MODEL, backend="cuda", n_ctx=64, page_size=4, kv_budget_tokens=8) as g:
        g.forward(list(range(1, 9)))
        with pytest.raises(ContextOverflowError, match="exhausted"):
            g.forward([1])
        assert g.n_past == 8


@gpu
def test_gpu_bench_script_runs_in_smoke_mode(tmp_path):
    # bench/cuda_bench.py is what a lent GPU session runs (bench/cuda_check.sh): its code paths are
    # checked here first, on tiny shapes (on the CPU emulator when there is no GPU)
    import subprocess

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    env = dict(os.environ, XSIL_CUDA_BENCH_SMOKE="1", XSIL_CACHE_DIR=str(tmp_path))
    p = subprocess.run(
        [sys.executable, os.path.join(root, "bench", "cuda_bench.py")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    assert "GEMV" in out and "prefill GEMM" in out and "decode" in out and "decode attention" in out
    assert "failed" not in out.replace("torch baseline failed", ""), out[-3000:]


@gpu
def test_kv_cache_too_large_for_the_device_says_what_to_do():
    with pytest.raises(BackendError, match=r"out of device memory: the KV cache needs .* MiB.*n_ctx.*q8_0"):
        xsil.Session(MODEL, backend="cuda", strict=True, n_ctx=2**29)
