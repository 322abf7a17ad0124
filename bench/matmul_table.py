"""Q4_0 matmul benchmark: xsil tiers vs ONNX Runtime MatMulNBits vs numpy fp32, as markdown tables;
plus a hot GEMV row per weight format (Q4_0, Q8_0, Q4_K, Q5_K, Q6_K, Q5_0) on one shape.

    python bench/matmul_table.py --quick     # representative subset, < 4 min on a 2-core box
    python bench/matmul_table.py --full      # Llama + TinyLlama shapes, GEMV hot/cold, GEMM M=128/512

All numbers are medians measured in this one process; ratios compare backends on the same shape and
thread count. See bench/_matmul.py for what is measured.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _matmul as bm  # noqa: E402
import xsil  # noqa: E402


FORMAT_ROWS = ("Q4_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q5_0")


def bench_formats(threads: list[int], tiers: list[str], log, K: int = 4096, N: int = 4096) -> None:
    """Hot GEMV (M=1) per weight format on the same shape, GGUF rows (and packed where the tier has
    a layout): the cost of a Q6_K output / ffn_down next to the Q4_0 and Q4_K matrices."""
    from xsil.testing import reference as ref

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, K)).astype(np.float32)
    rows = []
    for fmt in FORMAT_ROWS:
        w = ref.random_blocks(fmt, N, K, rng)
        for tier in tiers:
            packed = xsil.pack(w, fmt, isa=tier)
            for th in threads:
                for layout, wl in (("rows", w), ("packed", packed)):
                    if wl is None:
                        continue
                    t = bm.measure(lambda wl=wl, tier=tier, th=th: xsil.matmul(x, wl, fmt, isa=tier, threads=th))
                    rows.append((fmt, tier, th, layout, t, w.nbytes))
                    log((fmt, tier, th, layout, t))
    base = {(r[1], r[2], r[3]): r[4] for r in rows if r[0] == "Q4_0"}
    print(f"\n## GEMV by weight format (M=1, K={K} -> N={N}, hot)\n")
    print("Same process, medians; random valid blocks. 'vs Q4_0' = Q4_0 time / this time, same tier, threads "
          "and layout (Q4_0 rows for formats without a packed layout: compare with the Q4_0 rows row).\n")
    print("| format | bits/weight | tier | thr | layout | time (us) | GB/s | vs Q4_0 |")
    print("|---|---|---|---|---|---|---|---|")
    for fmt, tier, th, layout, t, nbytes in rows:
        fi = xsil.format_info(fmt)
        bpw = 8 * fi["type_size"] / fi["block_size"]
        b = base.get((tier, th, layout))
        print(f"| {fmt} | {bpw:.4g} | {tier} | {th} | {layout} | {t * 1e6:.0f} | {nbytes / t / 1e9:.1f} | "
              f"{b / t if b else float('nan'):.2f}x |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="representative subset (default)")
    g.add_argument("--full", action="store_true", help="every shape, GEMV hot+cold, GEMM M=128 and 512")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--tiers", default=None, help="comma-separated xsil tiers (default: all SIMD tiers)")
    ap.add_argument("--cases", default="gemv-cold,gemv-hot,gemm,formats",
                    help="comma-separated subset of gemv-cold, gemv-hot, gemm, formats (default: all)")
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--no-numpy", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each result as it is measured")
    args = ap.parse_args(argv)

    threads = [int(t) for t in args.threads.split(",")]
    tiers = args.tiers.split(",") if args.tiers else bm.simd_tiers()
    with_ort, with_np = not args.no_ort, not args.no_numpy
    log = (lambda r: print("  ", r, file=sys.stderr)) if args.verbose else (lambda r: None)
    xsil.set_num_threads(max(threads))
    t0 = time.time()

    info = xsil.cpu_info()
    print(f"# xsil matmul benchmark ({'full' if args.full else 'quick'})\n")
    print(f"CPU: {info['vendor']} {info['arch']}, {info['hardware_threads']} hardware threads, "
          f"features: {' '.join(info['features'])}; tiers: {', '.join(tiers)}; numpy {np.__version__}")
    if with_ort:
        import onnxruntime as ort

        err = bm.check_ort_conversion(np.random.default_rng(0))
        print(f"onnxruntime {ort.__version__}: MatMulNBits(bits=4, block_size=32, accuracy_level=4) on weights "
              f"converted from Q4_0; conversion check vs x @ dequant(W).T passed (max err {err:.2e}, "
              f"within the int8 activation bound)")

    roof = {th: bm.stream_read_gbs(th) for th in threads}
    print("\nStreaming-read roofline (numpy fp32 GEMV over 1 GiB), measured up front: " +
          ", ".join(f"{th} thr {gbs:.1f} GB/s" for th, gbs in roof.items()) +
          "; the cold GEMV rows are also timed in interleaved rounds with this roofline read "
          "(backend `roofline`), and their % uses that.")

    results: list[bm.Result] = []
    if args.full:
        gemv_hot = bm.ALL_SHAPES
        gemv_cold = bm.ALL_SHAPES
        gemm = [(K, N, M) for (K, N) in bm.ALL_SHAPES for M in (128, 512)]
    else:
        gemv_hot = [(4096, 11008), (2048, 5632)]
        gemv_cold = [(4096, 11008)]
        gemm = [(4096, 4096, 128), (2048, 5632, 512)]
    roof_arr = np.ones((bm.GIB // 4 // 4096, 4096), np.float32)
    cases = set(args.cases.split(","))
    if "gemv-cold" not in cases:
        gemv_cold = []
    if "gemv-hot" not in cases:
        gemv_hot = []
    if "gemm" not in cases:
        gemm = []
    for K, N in gemv_cold:
        results += bm.bench_gemv(K, N, threads, tiers, cold=True, rows_too=True, with_ort=with_ort,
                                 with_numpy=with_np, roofline=roof_arr, log=log)
    del roof_arr
    for K, N in gemv_hot:
        results += bm.bench_gemv(K, N, threads, tiers, cold=False, rows_too=args.full, with_ort=with_ort,
                                 with_numpy=with_np, log=log)
    for K, N, M in gemm:
        results += bm.bench_gemm(K, N, M, threads, tiers, with_ort=with_ort, with_numpy=with_np, log=log)

    def ref_time(r: bm.Result, backend: str):
        for o in results:
            if (o.kind, o.backend, o.K, o.N, o.M, o.threads) == (r.kind, backend, r.K, r.N, r.M, r.threads):
                return o.seconds
        return None

    def roof_gbs(r: bm.Result) -> float:
        for o in results:
            if (o.kind, o.backend, o.K, o.N, o.threads) == (r.kind, "roofline", r.K, r.N, r.threads):
                return o.gbs
        return roof[r.threads]

    def ratio(r, backend):
        t = ref_time(r, backend)
        return f"{t / r.seconds:.2f}x" if t and r.backend != backend else ""

    print("\n## GEMV (M=1): GB/s of weight bytes read\n")
    print("xsil-<tier>: weights packed for the tier; -rows: GGUF rows read directly. "
          "cold = cycling through >= 1 GiB of distinct matrices. Speedups are time ratios on the same shape.\n")
    print("| cache | K -> N | thr | backend | time/matmul (us) | GB/s | % of roofline | speedup vs ORT | vs numpy fp32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r.kind.startswith("gemv"):
            print(f"| {r.kind[5:]} | {r.K} -> {r.N} | {r.threads} | {r.backend} | {r.seconds * 1e6:.0f} | {r.gbs:.1f} | "
                  f"{100 * r.gbs / roof_gbs(r):.0f}% | {ratio(r, 'ort') if r.backend != 'roofline' else ''} | "
                  f"{ratio(r, 'numpy') if r.backend != 'roofline' else ''} |")
    print("\n## GEMM: GFLOP/s (2*M*N*K)\n")
    print("| M | K -> N | thr | backend | time (ms) | GFLOP/s | speedup vs ORT | vs numpy fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if r.kind == "gemm":
            print(f"| {r.M} | {r.K} -> {r.N} | {r.threads} | {r.backend} | {r.seconds * 1e3:.2f} | {r.gflops:.0f} | "
                  f"{ratio(r, 'ort')} | {ratio(r, 'numpy')} |")

    # Targets (2 threads, Q4_0): cold GEMV >= 0.9x roofline and >= 1.2x ORT; GEMM M=128 >= 2x ORT and >= numpy.
    if 2 in threads and tiers:
        best = tiers[-1]
        print(f"\n## Targets (2 threads, xsil-{best} packed)\n")
        for r in results:
            if r.threads != 2 or r.backend != f"xsil-{best}":
                continue
            if r.kind == "gemv-cold":
                t_ort = ref_time(r, "ort")
                rf = roof_gbs(r)
                print(f"- cold GEMV {r.K}->{r.N}: {r.gbs:.1f} GB/s = {r.gbs / rf:.2f}x roofline ({rf:.1f} GB/s; target >= 0.9: "
                      f"{'met' if r.gbs >= 0.9 * rf else 'NOT met'})" +
                      (f"; {t_ort / r.seconds:.2f}x ORT (target >= 1.2: {'met' if t_ort / r.seconds >= 1.2 else 'NOT met'})"
                       if t_ort else ""))
            if r.kind == "gemm" and r.M == 128:
                t_ort, t_np = ref_time(r, "ort"), ref_time(r, "numpy")
                s = f"- GEMM M=128 {r.K}->{r.N}: {r.gflops:.0f} GFLOP/s"
                if t_ort:
                    s += f"; {t_ort / r.seconds:.2f}x ORT (target >= 2: {'met' if t_ort / r.seconds >= 2 else 'NOT met'})"
                if t_np:
                    s += f"; {t_np / r.seconds:.2f}x numpy fp32 (target >= 1: {'met' if t_np >= r.seconds else 'NOT met'})"
                print(s)
    if "formats" in cases:
        bench_formats(threads, tiers, log)
    print(f"\n(total benchmark time {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
