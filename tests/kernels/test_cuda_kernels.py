"""xsil._cuda kernels against the CPU core / NumPy. Skip (with the probe's reason) without a GPU; the
import-and-probe checks run everywhere the extension is built."""

import sys

import numpy as np
import pytest

from xsil import _core

from xsil.backends.cuda import _load_ext

# the real extension on a GPU machine, else the CPU-emulated build of the same sources (tests/cuda_emu)
cuda_ext, _why = _load_ext()
if cuda_ext is None:
    pytest.skip(_why, allow_module_level=True)


def _gpu_reason():
    info = cuda_ext.device_info()
    return None if info["ok"] else info["reason"]


needs_gpu = pytest.mark.skipif(_gpu_reason() is not None, reason=f"cuda: {_gpu_reason()}")


def test_import_xsil_does_not_load_cuda():
    import subprocess

    code = "import sys, xsil, xsil.registry; print('xsil._cuda' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out.splitlines()[-1] == "False"


def test_device_info_never_raises():
    info = cuda_ext.device_info()
    assert set(info) >= {"ok", "reason", "devices", "driver_version", "runtime_version"}
    assert isinstance(info["reason"], str) and info["reason"]
    assert info["runtime_version"] > 0
    if not info["ok"]:
        assert info["devices"] == []
        assert any(w in info["reason"] for w in ("no CUDA driver", "no device", "driver", "CUDA"))


def _rel(a, b):
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30))


@needs_gpu
@pytest.mark.parametrize("fmt", ["Q4_0", "Q8_0"])
@pytest.mark.parametrize("M", [1, 3, 8, 17, 33])
@pytest.mark.parametrize("NK", [(64, 256), (130, 1024), (96, 5632)])
def test_matmul_quant_matches_cpu_integer_path(fmt, M, NK, rng):
    N, K = NK
    w = _core.quantize(rng.standard_normal((N, K)).astype(np.float32), fmt)
    x = rng.standard_normal((M, K)).astype(np.float32)
    want = _core.matmul(x, w, fmt)  # int8 activations per 32, as the CUDA kernels
    for path in ("dp4a", "mma", "auto"):
        got = cuda_ext.matmul(w, fmt, N, K, x, path=path)
        assert got.shape == (M, N)
        assert _rel(got, want) < 1e-4, path


def _q4k_weights(rng, N, K):
    from xsil.testing.reference import quantize_q4_k

    return quantize_q4_k(rng.standard_normal((N, K)).astype(np.float32))


def _weights(fmt, rng, N, K):
    from xsil.testing.reference import quantize_q5_k, quantize_q6_k

    x = rng.standard_normal((N, K)).astype(np.float32)
    if fmt == "Q4_K":
        return _q4k_weights(rng, N, K)
    if fmt == "Q5_K":
        return quantize_q5_k(x)
    if fmt == "Q6_K":
        return quantize_q6_k(x)
    return _core.quantize(x, fmt)


# the formats added after Q4_0 / Q8_0 / Q4_K (llama.cpp's Q4_K_M / Q5_K_M / Q6_K files, legacy Q4_1 / Q5_x)
NEW_QUANT = ["Q4_1", "Q5_0", "Q5_1", "Q5_K", "Q6_K"]
ALL_QUANT = ["Q4_0", "Q8_0", "Q4_K"] + NEW_QUANT


def _per32_integer_ref(w, fmt, K, x):
    """The per-32 integer path in float64 from the device's own q8a activations:
    sum_b d_x[b] * sum_k q_x[k] * w[k] with w the CPU-dequantized weights (w = d*sc*q - dmin*m for
    Q4_K, so this equals sum_b (d*sc) * d_x * dot(q4, q8) - (dmin*m) * s_x[b] up to fp32 rounding)."""
    qs, d, _s = cuda_ext.quantize_q8a(x)
    M = x.shape[0]
    wd = _core.dequantize(w, fmt, K).astype(np.float64)
    N = wd.shape[0]
    xq = qs.reshape(M, K // 32, 32).astype(np.float64) * d.astype(np.float64)[:, :, None]
    return xq.reshape(M, K) @ wd.reshape(N, K).T


@needs_gpu
@pytest.mark.parametrize("M", [1, 2, 5, 8, 16, 17, 33, 70])
@pytest.mark.parametrize("NK", [(64, 256), (130, 1024), (37, 2816)])
def test_matmul_q4_k_integer_path(M, NK, rng):
    # exact per-32 integer path (only fp32 rounding differs), for the GEMV, the dp4a GEMM and the mma GEMM
    N, K = NK
    w = _q4k_weights(rng, N, K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    want = _per32_integer_ref(w, "Q4_K", K, x)
    for path in ("dp4a", "mma", "auto"):
        got = cuda_ext.matmul(w, "Q4_K", N, K, x, path=path)
        assert got.shape == (M, N)
        assert _rel(got, want) < 2e-6, (path, _rel(got, want))


@needs_gpu
@pytest.mark.parametrize("fmt", NEW_QUANT)
@pytest.mark.parametrize("M", [1, 2, 8, 17, 33])
@pytest.mark.parametrize("NK", [(64, 256), (37, 2816)])
def test_matmul_new_formats_integer_path(fmt, M, NK, rng):
    # the exact per-32 integer path (only fp32 rounding differs): GEMV (M = 1), dp4a GEMM and the
    # tensor-core GEMM (Q6_K: one mma per sub-block of 16); measured on the emulator <= 2.1e-7 of
    # max|y| (Q6_K 0.9e-7: its per-16 scales combine in exact int32)
    N, K = NK
    w = _weights(fmt, rng, N, K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    want = _per32_integer_ref(w, fmt, K, x)
    for path in ("dp4a", "mma", "auto"):
        got = cuda_ext.matmul(w, fmt, N, K, x, path=path)
        assert got.shape == (M, N)
        assert _rel(got, want) < 2e-6, (path, _rel(got, want))


@needs_gpu
@pytest.mark.parametrize("fmt", ["Q4_1", "Q5_0", "Q5_1"])
@pytest.mark.parametrize("M", [1, 17])
def test_matmul_legacy_matches_cpu_integer_path(fmt, M, rng):
    # the CPU core quantizes these formats' activations per 32 as the CUDA kernels do: the same integer
    # block dots, only the fp32 scaling / summation order differs (measured on the emulator <= 2.6e-7)
    N, K = 130, 1024
    w = _weights(fmt, rng, N, K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    assert _rel(cuda_ext.matmul(w, fmt, N, K, x), _core.matmul(x, w, fmt)) < 2e-6


@needs_gpu
@pytest.mark.parametrize("fmt", ["Q5_K", "Q6_K"])
def test_matmul_k_quants_vs_cpu_core(fmt, rng):
    # as test_matmul_q4_k_vs_cpu_core: the CPU core's per-256 activations are not CUDA's per-32
    # integer path, so both are held to the float64 product of the dequantized weights. Measured on
    # the emulator (rel. to max|exact|): Q5_K cpu 6.9e-3, cuda 5.3e-3; Q6_K cpu 6.19e-3, cuda 6.28e-3
    # (1.014x); cuda vs cpu 8.3e-3 / 7.6e-3.
    N, K, M = 96, 2048, 9
    w = _weights(fmt, rng, N, K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    exact = x.astype(np.float64) @ _core.dequantize(w, fmt, K).astype(np.float64).T
    cpu = _core.matmul(x, w, fmt)
    gpu = cuda_ext.matmul(w, fmt, N, K, x)
    e_cpu, e_gpu = _rel(cpu, exact), _rel(gpu, exact)
    assert e_gpu < 1e-2 and e_gpu <= e_cpu * 1.1, (e_gpu, e_cpu)
    assert _rel(gpu, cpu) < 2e-2


@needs_gpu
def test_matmul_q4_k_vs_cpu_core(rng):
    # The CPU core quantizes Q4_K activations per 256 (block_q8k), the CUDA kernels per 32 (finer):
    # not the same integer path, so both are held to the float64 product of the dequantized weights.
    N, K, M = 96, 2048, 9
    w = _q4k_weights(rng, N, K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    exact = x.astype(np.float64) @ _core.dequantize(w, "Q4_K", K).astype(np.float64).T
    cpu = _core.matmul(x, w, "Q4_K")
    gpu = cuda_ext.matmul(w, "Q4_K", N, K, x)
    e_cpu, e_gpu = _rel(cpu, exact), _rel(gpu, exact)
    assert e_gpu < 1e-2 and e_gpu <= e_cpu * 1.1, (e_gpu, e_cpu)
    assert _rel(gpu, cpu) < 2e-2


@needs_gpu
@pytest.mark.parametrize("fmt", ALL_QUANT)
@pytest.mark.parametrize(
    "MNK", [(16, 64, 256), (17, 65, 512), (37, 100, 768), (64, 64, 1280), (130, 33, 256)]
)
def test_mma_gemm_equals_dp4a_gemm(fmt, MNK, rng):
    # odd M, N and block counts (K / 32 = 8, 16, 24, 40: chunks of 4 blocks, ragged 64-row tiles)
    M, N, K = MNK
    w = _weights(fmt, rng, N, K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    a = cuda_ext.matmul(w, fmt, N, K, x, path="dp4a")
    b = cuda_ext.matmul(w, fmt, N, K, x, path="mma")
    assert _rel(b, a) < 2e-6
    np.testing.assert_allclose(b, _per32_integer_ref(w, fmt, K, x), rtol=0, atol=2e-6 * np.abs(a).max())


@needs_gpu
@pytest.mark.parametrize("fmt", ALL_QUANT)
def test_gemm_rows_equal_gemv_bitwise(fmt, rng):
    # prefill dp4a GEMM and decode GEMV keep the same per-lane summation order: batch == step exactly
    N, K, M = 100, 2048, 19
    w = _weights(fmt, rng, N, K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    batch = cuda_ext.matmul(w, fmt, N, K, x, path="dp4a")
    step = np.concatenate([cuda_ext.matmul(w, fmt, N, K, x[i : i + 1]) for i in range(M)])
    np.testing.assert_array_equal(batch, step)


@needs_gpu
@pytest.mark.parametrize("fmt", ALL_QUANT)
def test_mma_self_check_passes(fmt):
    assert cuda_ext.mma_self_check(fmt) == ""
    assert cuda_ext.mma_status().startswith("on")


def test_mma_switch_env():
    # XSIL_CUDA_MMA=0 turns the tensor-core GEMM off (host-side state: no GPU needed)
    import os
    import subprocess

    code = "from xsil.backends.cuda import _load_ext; print(_load_ext()[0].mma_status())"
    env = dict(os.environ, XSIL_CUDA_MMA="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip().splitlines()[-1] == "off: XSIL_CUDA_MMA=0"
    env["XSIL_CUDA_MMA"] = "1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip().splitlines()[-1].startswith("on")


@needs_gpu
def test_failed_self_check_turns_mma_off_for_that_format_only():
    # a format whose tensor-core self-check fails (forced here) stays on the dp4a GEMM; others keep mma
    import os
    import subprocess

    code = """
import sys, numpy as np
sys.path.insert(0, %r)
from test_cuda_kernels import _weights
from xsil.backends.cuda import _load_ext
c = _load_ext()[0]
rng = np.random.default_rng(0)
assert c.mma_self_check("Q6_K") != "" and c.mma_self_check("Q4_0") == ""
print(c.mma_status())
x = rng.standard_normal((20, 256)).astype(np.float32)
for fmt in ("Q6_K", "Q4_0"):
    w = _weights(fmt, rng, 40, 256)
    auto = c.matmul(w, fmt, 40, 256, x)
    print(fmt, [bool((auto == c.matmul(w, fmt, 40, 256, x, path=p)).all()) for p in ("dp4a", "mma")])
""" % os.path.dirname(__file__)
    env = dict(os.environ, XSIL_CUDA_MMA_FAIL="Q6_K")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    status, q6, q4 = out.stdout.strip().splitlines()[-3:]
    assert status.startswith("on") and "off for Q6_K" in status and "XSIL_CUDA_MMA_FAIL" in status
    assert q6.startswith("Q6_K [True,")  # auto = dp4a
    assert q4.endswith(", True]")  # auto = mma


@needs_gpu
@pytest.mark.parametrize("fmt", ["F16", "F32"])
def test_matmul_dense(fmt, rng):
    N, K, M = 70, 320, 5
    wf = rng.standard_normal((N, K)).astype(np.float32)
    w = wf.astype(np.float16) if fmt == "F16" else wf
    x = rng.standard_normal((M, K)).astype(np.float32)
    want = x @ w.astype(np.float32).T
    got = cuda_ext.matmul(w.view(np.uint8), fmt, N, K, x)
    assert _rel(got, want) < 1e-5


@needs_gpu
def test_quantize_q8a(rng):
    x = rng.standard_normal((3, 128)).astype(np.float32)
    x[1, :32] = 0.0
    qs, d, s = cuda_ext.quantize_q8a(x)
    xb = x.reshape(3, 4, 32)
    dd = np.abs(xb).max(-1) / 127.0
    np.testing.assert_allclose(d, dd, rtol=1e-6)
    assert (qs[1, :32] == 0).all() and d[1, 0] == 0
    deq = qs.reshape(3, 4, 32) * d[..., None]
    assert np.abs(deq - xb).max() <= dd.max() * 0.5 + 1e-6
    np.testing.assert_allclose(s, d * qs.reshape(3, 4, 32).sum(-1), rtol=1e-5, atol=1e-6)


@needs_gpu
def test_rms_norm(rng):
    x = rng.standard_normal((4, 2048)).astype(np.float32)
    w = rng.standard_normal(2048).astype(np.float32)
    want = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(cuda_ext.rms_norm(x, w, 1e-5), want, rtol=1e-4, atol=1e-5)


@needs_gpu
@pytest.mark.parametrize("mode", ["normal", "neox"])
def test_rope_matches_cpu(mode, rng):
    x = rng.standard_normal((5, 4, 64)).astype(np.float32)
    pos0 = 1000
    want = _core.rope(x, np.arange(pos0, pos0 + 5, dtype=np.int64), mode, 10000.0, 1.0)
    got = cuda_ext.rope(x, pos0, mode, 10000.0, 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@needs_gpu
def test_rms_norm_q_fused(rng):
    x = rng.standard_normal((3, 2048)).astype(np.float32)
    a = rng.standard_normal((3, 2048)).astype(np.float32)
    w = rng.standard_normal(2048).astype(np.float32)
    x2, h, qs, d, s = cuda_ext.rms_norm_q(x, a, w, 1e-5)
    np.testing.assert_array_equal(x2, x + a)
    np.testing.assert_allclose(h, cuda_ext.rms_norm(x + a, w, 1e-5), rtol=1e-5, atol=1e-6)
    q2, d2, s2 = cuda_ext.quantize_q8a(h)
    np.testing.assert_array_equal(qs, q2)
    np.testing.assert_array_equal(d, d2)
    np.testing.assert_allclose(s, s2, rtol=1e-6)


@needs_gpu
def test_swiglu_q_fused(rng):
    g = rng.standard_normal((2, 5632)).astype(np.float32)
    u = rng.standard_normal((2, 5632)).astype(np.float32)
    y, qs, d, _s = cuda_ext.swiglu_q(g, u)
    np.testing.assert_allclose(y, g / (1 + np.exp(-g)) * u, rtol=1e-5, atol=1e-6)
    q2, d2, _ = cuda_ext.quantize_q8a(y)
    np.testing.assert_array_equal(qs, q2)
    np.testing.assert_array_equal(d, d2)


@needs_gpu
def test_swiglu(rng):
    g = rng.standard_normal(1000).astype(np.float32)
    u = rng.standard_normal(1000).astype(np.float32)
    np.testing.assert_allclose(cuda_ext.swiglu(g, u), g / (1 + np.exp(-g)) * u, rtol=1e-5, atol=1e-6)


@needs_gpu
@pytest.mark.parametrize("fmt", ALL_QUANT + ["F16", "F32"])
def test_get_rows(fmt, rng):
    rows, n = 50, 512
    wf = rng.standard_normal((rows, n)).astype(np.float32)
    if fmt in ALL_QUANT:
        w = _weights(fmt, rng, rows, n)
        ref = _core.dequantize(w, fmt, n)
    else:
        w = wf.astype(np.float16) if fmt == "F16" else wf
        ref = w.astype(np.float32)
    tok = np.array([3, 0, 49, 3], np.int32)
    got = cuda_ext.get_rows(w.view(np.uint8), fmt, rows, n, tok)
    np.testing.assert_array_equal(got, ref[tok])


def _attn_ref(q, k, v, scale):
    nq, H, _hd = q.shape
    nk, nkv, _ = k.shape
    k = k.astype(np.float16).astype(np.float64)
    v = v.astype(np.float16).astype(np.float64)
    out = np.zeros(q.shape)
    for i in range(nq):
        pos = nk - nq + i
        for h in range(H):
            kh = h // (H // nkv)
            s = (k[: pos + 1, kh] @ q[i, h]) * scale
            p = np.exp(s - s.max())
            out[i, h] = (p[:, None] * v[: pos + 1, kh]).sum(0) / p.sum()
    return out


def _paged_attention(q, k, v, page_size=16):
    """Causal attention of q (the last nq positions) over k/v through the device paged cache: decode
    (split-K, up to 8 splits of 64 tokens) for one query, the tiled prefill for several."""
    nq, _H, hd = q.shape
    nk, nkv, _ = k.shape
    c = cuda_ext.KVCache(1, nkv, hd, page_size=page_size, budget_tokens=nk + page_size, rope="none")
    s = c.add_sequence()
    c.append(s, k[None], v[None])
    if nq == 1:
        return cuda_ext.attention_decode(c, 0, np.array([s], np.int32), q, split_tokens=64, max_splits=8)
    return cuda_ext.attention_prefill(c, 0, s, q)


@needs_gpu
@pytest.mark.parametrize(
    "nq,nk", [(1, 1), (1, 37), (1, 600), (2, 2), (9, 9), (7, 40), (33, 33), (20, 100), (70, 300)]
)
@pytest.mark.parametrize("hd", [64, 128])
def test_attention(nq, nk, hd, rng):
    H, nkv = 8, 2
    q = rng.standard_normal((nq, H, hd)).astype(np.float32)
    k = rng.standard_normal((nk, nkv, hd)).astype(np.float32)
    v = rng.standard_normal((nk, nkv, hd)).astype(np.float32)
    got = _paged_attention(q, k, v, page_size=16 if nk % 3 else 7)
    np.testing.assert_allclose(got, _attn_ref(q, k, v, 1 / np.sqrt(hd)), rtol=1e-4, atol=1e-4)


@needs_gpu
def test_errors_name_the_kernel(rng):
    with pytest.raises(ValueError, match=r"Q2_K.*not supported \(supported: .*Q6_K"):
        cuda_ext.matmul(np.zeros(84, np.uint8), "Q2_K", 1, 256, np.zeros((1, 256), np.float32))
    for fmt in ("Q4_K", "Q5_K", "Q6_K"):
        with pytest.raises(ValueError, match=r"\[cuda:matmul\].*multiple of 256 for " + fmt):
            cuda_ext.matmul(np.zeros(72, np.uint8), fmt, 1, 128, np.zeros((1, 128), np.float32))
        with pytest.raises(ValueError, match=r"\[cuda:get_rows\].*multiple of 256 for " + fmt):
            cuda_ext.get_rows(np.zeros(72, np.uint8), fmt, 1, 128, np.zeros(1, np.int32))
    with pytest.raises(ValueError, match=r"\[cuda:matmul\] w has 21 bytes, expected 20"):
        cuda_ext.matmul(np.zeros(21, np.uint8), "Q4_1", 1, 32, np.zeros((1, 32), np.float32))
    with pytest.raises(ValueError, match=r"\[cuda:get_rows\] w has the wrong size"):
        cuda_ext.get_rows(np.zeros(21, np.uint8), "Q5_0", 1, 32, np.zeros(1, np.int32))
    with pytest.raises(ValueError, match=r"\[cuda:matmul\].*tensor-core"):
        z = np.zeros((20, 64), np.float32)
        cuda_ext.matmul(np.zeros((4, 64), np.float32), "F32", 4, 64, z, path="mma")
    with pytest.raises(ValueError, match=r"\[cuda:matmul\]"):
        cuda_ext.matmul(np.zeros(10, np.uint8), "Q4_0", 1, 100, np.zeros((1, 100), np.float32))
    with pytest.raises(ValueError, match=r"\[kv_cache\].*head_dim"):
        cuda_ext.KVCache(1, 2, 48)  # the device attention needs head_dim a multiple of 32
