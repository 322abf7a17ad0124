"""CUDA backend checks on a GPU machine (run by bench/cuda_check.sh): Q4_0 / Q8_0 / Q4_K / Q6_K GEMV bandwidth
against a device-to-device copy measured in the same process, prefill GEMM GFLOP/s of the __dp4a
kernel vs the tensor-core (mma.sync) kernel, decode attention us per TinyLlama layer at ctx 512 / 2048 / 8192,
and end-to-end decode tok/s on the TinyLlama-shaped
synthetic model against an fp16 PyTorch matmul chain of the same dimensions. Prints a table."""

from __future__ import annotations

import os
import sys
import time

import numpy as np

# XSIL_CUDA_BENCH_SMOKE=1: tiny shapes and a tiny model, to check this script's code paths (the test
# suite runs it on the CPU emulator) before spending GPU time on it. Its numbers mean nothing.
SMOKE = os.environ.get("XSIL_CUDA_BENCH_SMOKE") == "1"


def _ext():
    from xsil.backends.cuda import _load_ext

    ext, why = _load_ext()
    if ext is None:
        raise RuntimeError(why)
    return ext


def gemv_rows():
    _cuda = _ext()

    rows = []
    # 16384 x 16384 Q4_0 (151 MB of quants, 3x the H100's 50 MB L2): the bandwidth-bound case.
    # The TinyLlama shapes fit in L2 when repeated, so they are shown for latency, not bandwidth.
    for fmt, n, k in [
        ("Q4_0", 16384, 16384),
        ("Q8_0", 16384, 16384),
        ("Q4_0", 5632, 2048),
        ("Q4_0", 2048, 5632),
        ("Q4_0", 32000, 2048),
        ("Q4_K", 16384, 16384),
        ("Q4_K", 5632, 2048),
        ("Q4_K", 2048, 5632),
        # Q6_K: output.weight (32000 x 2048 on TinyLlama) and ffn_down in every Q4_K_M file
        ("Q6_K", 16384, 16384),
        ("Q6_K", 32000, 2048),
        ("Q6_K", 2048, 5632),
        ("Q5_K", 16384, 16384),
    ]:
        if SMOKE:
            n, k = min(n, 96), min(k, 512)
        r = _cuda.bench_gemv(fmt, n, k, 2 if SMOKE else 50)
        rows.append((fmt, n, k, r))
    return rows


def gemm_rows():
    """Prefill GEMM (activation quantization included): dp4a vs mma at M = 16 / 128 / 512 on the
    TinyLlama FFN shape (5632 x 2048) and a square 4096 one. The mma self-check runs first: a failing
    kernel is reported instead of timed."""
    _cuda = _ext()

    rows = []
    for fmt in ("Q4_0", "Q8_0", "Q4_K", "Q6_K"):
        why = _cuda.mma_self_check(fmt)
        for n, k in [(64, 512)] if SMOKE else [(5632, 2048), (4096, 4096)]:
            for m in (16, 33) if SMOKE else (16, 128, 512):
                it = 1 if SMOKE else 10
                d = _cuda.bench_gemm(fmt, n, k, m, "dp4a", it)
                t = _cuda.bench_gemm(fmt, n, k, m, "mma", it) if not why else None
                rows.append((fmt, n, k, m, d, t, why))
    return rows


def attention_rows():
    """Decode attention (GQA-grouped split-K + merge) for one TinyLlama layer (32 query heads, 4 KV
    heads, head_dim 64), the model's default split plan: us per layer per token, at ctx 512 / 2048 /
    8192 with f16 and q8_0 K/V. GB/s counts the K/V bytes each call must read once."""
    _cuda = _ext()
    rows = []
    for ctx in (64, 200) if SMOKE else (512, 2048, 8192):
        for kvd in ("f16", "q8_0"):
            r = _cuda.bench_attention_decode(32, 4, 64, ctx, kvd, 1 if SMOKE else 200)
            rows.append((ctx, kvd, r))
    return rows


def decode_xsil(
    path: str, n_prompt: int = 16, n_decode: int = 128, graphs: bool = True, kv_dtype: str = "f16"
):
    import xsil

    with xsil.Session(
        path,
        backend="cuda",
        n_ctx=n_prompt + n_decode + 8,
        strict=True,
        cuda_graphs=graphs,
        kv_dtype=kv_dtype,
    ) as s:
        t0 = time.perf_counter()
        s.forward([1 + i % 500 for i in range(n_prompt)])
        t_prefill = time.perf_counter() - t0
        fwd_last = s._forward_last
        tok = np.array([5], np.int32)
        for _ in range(4):  # warm-up (first-call allocations)
            fwd_last(tok)
        s.reset()
        s.forward([1 + i % 500 for i in range(n_prompt)])
        t0 = time.perf_counter()
        for _ in range(n_decode):
            logits = fwd_last(tok)
            tok = np.array([int(logits.argmax())], np.int32)
        dt = time.perf_counter() - t0
        return n_decode / dt, t_prefill, s.describe()


def prefill_mma_vs_dp4a(path: str, n: int = 512) -> str:
    """Prefill of n tokens (all logits) with the tensor-core GEMM on, then off (dp4a GEMM)."""
    import xsil
    _cuda = _ext()

    before = _cuda.mma_status()
    out = []
    for on in (True, False):
        _cuda.set_mma(on)
        with xsil.Session(path, backend="cuda", n_ctx=n + 8, strict=True) as s:
            toks = [1 + i % 1000 for i in range(n)]
            s.forward(toks)  # warm-up (allocation)
            s.reset()
            t0 = time.perf_counter()
            s.forward(toks)
            out.append(time.perf_counter() - t0)
    if before.startswith("off"):
        _cuda.set_mma(False)
    else:
        _cuda.set_mma(True)
    return (
        f"prefill {n} tokens: mma {out[0] * 1e3:.1f} ms ({n / out[0]:.0f} tok/s), "
        f"dp4a {out[1] * 1e3:.1f} ms ({n / out[1]:.0f} tok/s); mma status was: {before}"
    )


def decode_torch(cfg, n_decode: int = 128):
    import torch

    dev = "cuda"
    E, F, V, L = cfg.n_embd, cfg.n_ff, cfg.n_vocab, cfg.n_layer
    qd, kd = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    g = torch.Generator(device=dev).manual_seed(0)

    def w(n, k):
        return torch.randn(n, k, device=dev, generator=g, dtype=torch.float16) * 0.02

    layers = [[w(qd, E), w(kd, E), w(kd, E), w(E, qd), w(F, E), w(F, E), w(E, F)] for _ in range(L)]
    out = w(V, E)
    x = torch.randn(1, E, device=dev, dtype=torch.float16)

    def step(x):
        for wq, wk, wv, wo, wg, wu, wd in layers:
            q = x @ wq.T
            k = x @ wk.T
            v = x @ wv.T
            h = q @ wo.T
            x = x + h
            a = torch.nn.functional.silu(x @ wg.T) * (x @ wu.T)
            x = x + a @ wd.T
            del k, v
        return x @ out.T

    for _ in range(4):
        step(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n_decode):
        y = step(x)
        _ = int(y.argmax())  # one host sync per token, as a decode loop does
    torch.cuda.synchronize()
    return n_decode / (time.perf_counter() - t0)


def main() -> int:
    from xsil.backends.cuda import device_info

    info = device_info()
    print("device_info:", info, flush=True)
    if not info["ok"]:
        print("no usable GPU:", info["reason"])
        return 1
    print(
        "\n== Q4_0 / Q8_0 / Q4_K / Q6_K / Q5_K GEMV (M=1, incl. activation quantization) vs device-to-device copy ==",
        flush=True,
    )
    print(
        f"{'fmt':5} {'N':>6} {'K':>6} {'MB':>7} {'gemv us':>9} {'gemv GB/s':>10} "
        f"{'copy GB/s':>10} {'% copy':>7}"
    )
    for fmt, n, k, r in gemv_rows():
        print(
            f"{fmt:5} {n:6d} {k:6d} {r['bytes'] / 1e6:7.1f} {r['gemv_us']:9.1f} {r['gemv_GBps']:10.0f} "
            f"{r['copy_GBps']:10.0f} {100 * r['gemv_GBps'] / r['copy_GBps']:6.0f}%",
            flush=True,
        )

    _cuda = _ext()

    print(
        "\n== prefill GEMM (incl. activation quantization): dp4a vs tensor cores; "
        f"mma: {_cuda.mma_status()} =="
    )
    print(
        f"{'fmt':5} {'N':>6} {'K':>6} {'M':>5} {'dp4a us':>9} {'dp4a GF/s':>10} {'mma us':>9} "
        f"{'mma GF/s':>10} {'x':>6}"
    )
    try:
        for fmt, n, k, m, d, t, why in gemm_rows():
            if t is None:
                print(
                    f"{fmt:5} {n:6d} {k:6d} {m:5d} {d['us']:9.1f} {d['GFLOPs']:10.0f}   mma off: {why}",
                    flush=True,
                )
            else:
                print(
                    f"{fmt:5} {n:6d} {k:6d} {m:5d} {d['us']:9.1f} {d['GFLOPs']:10.0f} {t['us']:9.1f} "
                    f"{t['GFLOPs']:10.0f} {d['us'] / t['us']:5.2f}x",
                    flush=True,
                )
    except Exception as e:  # keep the rest of the report
        print("GEMM bench failed:", e, flush=True)
    print("mma status after the GEMM bench:", _cuda.mma_status(), flush=True)

    print("\n== decode attention, one TinyLlama layer (32 q heads / 4 KV heads, hd 64), default split plan ==")
    print(f"{'ctx':>6} {'KV':5} {'us/layer':>9} {'KV GB/s':>8} {'splits':>7} {'CTAs':>5}")
    try:
        for ctx, kvd, r in attention_rows():
            print(
                f"{ctx:6d} {kvd:5} {r['us']:9.2f} {r['GBps']:8.0f} {r['splits']:7d} {r['ctas']:5d}",
                flush=True,
            )
    except Exception as e:  # keep the rest of the report
        print("attention bench failed:", e, flush=True)

    from xsil.model.default import TINYLLAMA, synthetic_model_path
    from xsil.model.gguf import GGUFFile
    from xsil.model.llama import LlamaConfig

    t0 = time.perf_counter()
    spec = TINYLLAMA
    if SMOKE:
        from xsil.model.default import SyntheticSpec

        spec = SyntheticSpec(
            name="cuda-bench-smoke", n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=512, n_vocab=512
        )
    path = synthetic_model_path(spec)
    print(
        f"\nTinyLlama-shaped model: {path} ({os.path.getsize(path) / 1e6:.0f} MB, "
        f"{time.perf_counter() - t0:.1f} s to get)",
        flush=True,
    )
    g = GGUFFile(path)
    cfg = LlamaConfig.from_gguf(g)
    g.close()
    nd = 4 if SMOKE else 128
    tps, t_pre, desc = decode_xsil(path, n_decode=nd)
    tps_nog, _, _ = decode_xsil(path, graphs=False, n_decode=nd)
    print("describe:", {k: desc[k] for k in ("device", "memory", "mma_gemm")}, flush=True)
    try:
        base = decode_torch(cfg, n_decode=nd)
    except Exception as e:  # torch missing or failing: still report ours
        print("torch baseline failed:", e)
        base = float("nan")
    wb = desc["memory"]["weight_bytes"]
    print("\n== decode, TinyLlama shapes (22 layers, 2048/5632, vocab 32000), batch 1 ==")
    print(f"{'runner':34} {'tok/s':>8} {'ms/tok':>8} {'GB/s (weights)':>15}")
    print(f"{'xsil cuda (Q4_0, fp16 KV)':34} {tps:8.1f} {1e3 / tps:8.2f} {wb * tps / 1e9:15.0f}")
    print(f"{'xsil cuda, no CUDA graph':34} {tps_nog:8.1f} {1e3 / tps_nog:8.2f} {wb * tps_nog / 1e9:15.0f}")
    print(f"{'torch fp16 matmul chain':34} {base:8.1f} {1e3 / base:8.2f}")
    # long contexts: the paged decode attention splits the keys across CTAs (split-K, 64+ tokens
    # per split, up to ~2 CTAs per SM); q8_0 K/V halves the cache bytes read per token
    long_ctx = (40,) if SMOKE else (2048, 8192)
    for n_prompt, kvd in [(n, d) for n in long_ctx for d in ("f16", "q8_0")]:
        try:
            t, tp, _ = decode_xsil(path, n_prompt=n_prompt, n_decode=2 if SMOKE else 64, kv_dtype=kvd)
            label = f"xsil cuda, ctx {n_prompt}, {kvd} KV"
            print(f"{label:34} {t:8.1f} {1e3 / t:8.2f}   (prefill {n_prompt}: {tp * 1e3:.0f} ms)", flush=True)
        except Exception as e:  # report and go on
            print(f"ctx {n_prompt} {kvd}: failed: {e}", flush=True)
    try:
        print(prefill_mma_vs_dp4a(path, n=40 if SMOKE else 512), flush=True)
    except Exception as e:
        print("prefill comparison failed:", e, flush=True)
    print(
        f"speedup vs fp16 baseline: {tps / base:.2f}x (target >= 3x); "
        f"prefill 16 tokens: {t_pre * 1e3:.1f} ms "
        f"(first call, incl. allocation)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
