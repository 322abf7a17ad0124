"""Decode-attention benchmark table (markdown) for bench/README.md.

    python bench/attention_table.py            # contexts 512, 2048, 4096, 8192
    python bench/attention_table.py --quick    # same grid, fewer repetitions (< ~3 min)

For each layer shape, KV dtype, context and thread count: the median time of one decode step of one
layer (xsil, best ISA tier), the K/V bytes it reads per second, that rate as a fraction of the
streaming-read bandwidth measured in the same run, ONNX Runtime's GroupQueryAttention (fp16 K/V, the
closest it has to an 8-bit cache) on the same shapes and a plain NumPy (fp32) step.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

# The NumPy column is one BLAS thread: with 2 cores, BLAS's own spinning threads would fight the
# kernels being timed (and each other) instead of measuring anything.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _attention as A  # noqa: E402

import xsil  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (the whole table in < ~3 min)")
    ap.add_argument("--contexts", default="512,2048,4096,8192")
    ap.add_argument("--shapes", default="tinyllama,llama7b")
    ap.add_argument("--dtypes", default="f16,q8_0")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--isa", default="", help="xsil tier (default: best available)")
    ap.add_argument("--no-ort", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        A.COLD_BYTES = 128 << 20
    ctxs = [int(c) for c in args.contexts.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    info = xsil.cpu_info()
    tier = args.isa or info["tier"]
    # The roofline: the best streaming-read measurement of the run (before, between the rounds and
    # after), so background load on a shared machine does not flatter the fractions.
    bw = {t: A.stream_read_gbs(t) for t in threads}
    ort_ver = None
    if not args.no_ort:
        try:
            import onnxruntime

            ort_ver = onnxruntime.__version__
        except ImportError:
            pass
    rows = []
    print(f"CPU: {platform.processor() or info['arch']} ({info['hardware_threads']} hardware threads), xsil tier "
          f"`{tier}`, ONNX Runtime {ort_ver or 'not installed'}, NumPy {np.__version__}")
    print(f"Each step reads one layer; the benchmark cycles through >= {A.COLD_BYTES >> 20} MiB of layers so K/V "
          "comes from memory, as in a model.\n")
    dtypes = args.dtypes.split(",")
    rounds = 2 if args.quick else 4
    for shape in args.shapes.split(","):
        for ctx in ctxs:
            cases = {dt: A.DecodeCase(shape, ctx, dt).build() for dt in dtypes}
            for dt, case in cases.items():
                err = np.abs(case.step(0, threads[-1], tier) - case.reference()).max()
                assert err < {"f32": 1e-3, "f16": 1e-2, "q8_0": 1e-2}[dt], f"xsil differs from the reference: {err}"
            np_us = A.time_numpy(cases[dtypes[0]]) * 1e6
            orts = {}
            if ort_ver:
                for t in threads:
                    orts[t] = A.OrtDecode(cases[dtypes[0]], t)
                    orts[t].check()
            # Several rounds, alternating xsil and ORT; each keeps its best median (a shared machine's
            # background load only ever slows a round down).
            best = {}
            for _ in range(rounds):
                for t in threads:
                    bw[t] = max(bw[t], A.stream_read_gbs(t, reps=3))
                    for dt, case in cases.items():
                        time.sleep(0.05)  # let the other runtime's spinning workers go idle
                        us = case.time(t, tier) * 1e6
                        best[(dt, t)] = min(best.get((dt, t), float("inf")), us)
                    if t in orts:
                        time.sleep(0.05)
                        us = orts[t].time() * 1e6
                        best[("ort", t)] = min(best.get(("ort", t), float("inf")), us)
            for dt, case in cases.items():
                for t in threads:
                    us = best[(dt, t)]
                    rows.append((shape, dt, ctx, t, us, case.kv_bytes / us / 1e3, best.get(("ort", t)), np_us))
                    print(f"  measured {shape} {dt} ctx={ctx} threads={t}: {us:.0f} us", file=sys.stderr, flush=True)
            del cases, orts
    for t in threads:
        bw[t] = max(bw[t], A.stream_read_gbs(t))
    print("Streaming-read bandwidth measured in this run (best of the run): " +
          ", ".join(f"{bw[t]:.1f} GB/s ({t} thread{'s' if t > 1 else ''})" for t in threads) + "\n")
    print("| layer | KV | ctx | thr | xsil µs | K/V GB/s | vs stream | ORT GQA fp16 µs | xsil vs ORT | NumPy fp32 µs (1 thread) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for shape, dt, ctx, t, us, gbs, o_us, np_us in rows:
        print(f"| {A.SHAPES[shape]['label'].split(' (')[0]} | {dt} | {ctx} | {t} | {us:.0f} | {gbs:.1f} | "
              f"{gbs / bw[t]:.2f}× | {'%.0f' % o_us if o_us else '-'} | "
              f"{'%.1f×' % (o_us / us) if o_us else '-'} | {np_us:.0f} |")


if __name__ == "__main__":
    main()
