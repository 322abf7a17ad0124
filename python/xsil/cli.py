"""Command line: ``xsil demo`` (kernel self-check + short benchmark), ``xsil info``."""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _median_time(fn, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def cmd_info(args: argparse.Namespace) -> int:
    import xsil

    print(json.dumps(xsil.cpu_info(), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import xsil
    from xsil.testing import reference as ref

    info = xsil.cpu_info()
    tiers = info["available_tiers"]
    print(f"xsil {xsil.__version__}  arch={info['arch']}  tiers={','.join(tiers)}  default={info['tier']}  "
          f"threads={info['threads']}")
    rng = np.random.default_rng(0)
    # 1. Self-check: every available tier against the NumPy reference.
    ok = True
    print("\nself-check against the NumPy model of the integer path "
          "(max |xsil - ref| / max |ref|, must be < 1e-4):")
    for fmt in xsil.FORMATS:
        K, N, M = 512, 96, 5
        w = rng.standard_normal((N, K)).astype(np.float32)
        if fmt == "Q4_K":  # no Q4_K quantizer (as in gguf-py): valid random blocks
            wq = ref.random_blocks(fmt, N, K, rng)
        else:
            wq = xsil.quantize(w, fmt)
        x = rng.standard_normal((M, K)).astype(np.float32)
        want = ref.matmul_int8(x, wq, fmt)
        scale = np.abs(want).max() + 1e-30
        for tier in tiers:
            got = xsil.matmul(x, wq, fmt, isa=tier)
            err = float(np.abs(got - want).max() / scale)
            good = err < 1e-4
            ok &= good
            print(f"  {fmt:5s} {tier:8s} rel.err {err:.2e}  {'ok' if good else 'FAIL'}")
    # 2. Short benchmark: decode GEMV + prefill GEMM at a TinyLlama shape.
    print("\nbenchmark (TinyLlama 2048x5632 Q4_0, median of repeats, hot cache):")
    K, N = 2048, 5632
    w = rng.standard_normal((N, K)).astype(np.float32)
    wq = xsil.quantize(w, "Q4_0")
    wd = xsil.dequantize(wq, "Q4_0", K)
    rows = []
    for M in (1, 128):
        x = rng.standard_normal((M, K)).astype(np.float32)
        rep = 30 if M == 1 else 5
        t_np = _median_time(lambda: x @ wd.T, rep)  # noqa: B023 (called before x changes)
        for tier in tiers:
            t = _median_time(lambda: xsil.matmul(x, wq, "Q4_0", isa=tier), rep)  # noqa: B023 (same)
            gbs = wq.nbytes / t / 1e9
            gflops = 2 * M * N * K / t / 1e9
            rows.append((M, tier, t * 1e3, gbs, gflops, t_np / t))
    print(f"  {'M':>4s} {'tier':8s} {'ms':>8s} {'GB/s(w)':>8s} {'GFLOP/s':>8s} {'x numpy fp32':>12s}")
    for M, tier, ms, gbs, gf, sp in rows:
        print(f"  {M:4d} {tier:8s} {ms:8.3f} {gbs:8.1f} {gf:8.1f} {sp:12.2f}")
    print("\nself-check:", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xsil", description="xsil: cross-silicon 4-bit LLM runtime")
    sub = p.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="kernel self-check against the NumPy reference + a short benchmark")
    demo.set_defaults(fn=cmd_demo)
    sub.add_parser("info", help="CPU features and ISA tiers as JSON").set_defaults(fn=cmd_info)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
