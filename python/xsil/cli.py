"""Command line: ``xsil demo`` (kernel self-check + short benchmark), ``xsil info``."""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def cmd_info(args: argparse.Namespace) -> int:
    import xsil

    print(json.dumps(xsil.cpu_info(), indent=2))
    return 0


def _selfcheck(rng) -> bool:
    import xsil
    from xsil.testing import reference as ref

    ok = True
    tiers = xsil.cpu_info()["available_tiers"]
    print("kernel self-check against the NumPy model of the integer path "
          "(max |xsil - ref| / max |ref|, must be < 1e-4):")
    for fmt in xsil.FORMATS:
        K, N, M = 512, 96, 5
        w = rng.standard_normal((N, K)).astype(np.float32)
        # K-quants: the reference's simple quantizers (the core quantizes only the 32-element formats)
        kq = {"Q4_K": ref.quantize_q4_k, "Q5_K": ref.quantize_q5_k, "Q6_K": ref.quantize_q6_k}
        wq = kq[fmt](w) if fmt in kq else xsil.quantize(w, fmt)
        x = rng.standard_normal((M, K)).astype(np.float32)
        want = ref.matmul_int8(x, wq, fmt)
        scale = np.abs(want).max() + 1e-30
        line = []
        for tier in tiers:
            err = float(np.abs(xsil.matmul(x, wq, fmt, isa=tier) - want).max() / scale)
            ok &= err < 1e-4
            line.append(f"{tier} {err:.1e}{'' if err < 1e-4 else ' FAIL'}")
        print(f"  {fmt:5s} " + ", ".join(line))
    return ok


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: kernel self-check, a streamed completion on the embedded default model, and a
    short benchmark of the same model."""
    import xsil

    info = xsil.cpu_info()
    print(f"xsil {xsil.__version__}  arch={info['arch']}  tiers={','.join(info['available_tiers'])}  "
          f"default={info['tier']}  threads={info['threads']}\n")
    ok = _selfcheck(np.random.default_rng(0))
    print()
    run_args = argparse.Namespace(model=None, backend="auto", strict=False, n_ctx=2048, kv_dtype="f16",
                                  threads=None, isa=None, prompt="The edge model is", max_tokens=48,
                                  temperature=0.0, top_k=0, top_p=1.0, seed=None)
    cmd_run(run_args)
    print()
    from .benchmark import main as bench_main

    bench_args = argparse.Namespace(model=None, tinyllama=False, threads=None, pp="128", tg=64, repeat=3,
                                    n_ctx=1024, kv_dtype="f16", backends="cpu", llama_cpp="auto", json_out=None,
                                    quiet_json=True)
    rc = bench_main(bench_args)
    print("\nself-check:", "PASSED" if ok else "FAILED")
    return 0 if ok and rc == 0 else 1


def cmd_devices(args: argparse.Namespace) -> int:
    import xsil

    rows = xsil.backends(refresh=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'backend':8s} {'kind':4s} {'score':>5s} {'available':9s} reason / devices")
    for r in rows:
        devs = "; ".join(d["name"] for d in r["devices"])
        print(f"{r['name']:8s} {r['kind']:4s} {r['score']:5d} {str(r['available']):9s} {r['reason']}"
              + (f"  [{devs}]" if devs else ""))
    return 0


def _open(args: argparse.Namespace):
    import xsil

    opts = {}
    if getattr(args, "isa", None):
        opts["isa"] = args.isa
    return xsil.Session(args.model, backend=args.backend, strict=args.strict, n_ctx=args.n_ctx,
                        kv_dtype=args.kv_dtype, threads=args.threads, **opts)


def cmd_run(args: argparse.Namespace) -> int:
    from .model.default import default_model_path

    if args.model is None:
        print(f"xsil: no model given; using the embedded default model ({default_model_path()}).\n"
              "      Its weights are SYNTHETIC (random, generated offline with fixed seeds): the text is "
              "meaningless; the speed and the code path are real.", file=sys.stderr)
    t0 = time.perf_counter()
    s = _open(args)
    t_load = time.perf_counter() - t0
    with s:
        d = s.describe()
        print(f"[{d['backend']} on {d['device']} ({d.get('isa', '')}), load {t_load * 1e3:.0f} ms; {s.selection}]",
              file=sys.stderr)
        ids = s.tokenize(args.prompt)
        t1 = time.perf_counter()
        first = None
        n = 0
        sys.stdout.write(args.prompt)
        for ev in s.generate(ids, max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, seed=args.seed):
            if first is None:
                first = time.perf_counter() - t1
            n += 1
            sys.stdout.write(ev.text)
            sys.stdout.flush()
        dt = time.perf_counter() - t1
        print()
        decode = (n - 1) / (dt - first) if n > 1 and dt > first else float("nan")
        print(f"[prompt {len(ids)} tokens, time to first token {first * 1e3:.1f} ms; {n} tokens generated, "
              f"decode {decode:.1f} tok/s]", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .benchmark import main as bench_main

    return bench_main(args)


def _add_session_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="GGUF file (default: the embedded synthetic model)")
    p.add_argument("--backend", default="auto", help="auto, cpu, ... or a comma-separated preference list")
    p.add_argument("--strict", action="store_true", help="never fall back to another backend")
    p.add_argument("--n-ctx", type=int, default=4096, help="KV cache budget in tokens (default 4096)")
    p.add_argument("--kv-dtype", default="f16", choices=["f32", "f16", "q8_0"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--isa", default=None, help="CPU ISA tier for the cpu backend")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xsil", description="xsil: cross-silicon 4-bit LLM runtime")
    sub = p.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="kernel self-check against the NumPy reference + a short benchmark")
    demo.set_defaults(fn=cmd_demo)
    sub.add_parser("info", help="CPU features and ISA tiers as JSON").set_defaults(fn=cmd_info)
    pd = sub.add_parser("devices", help="backends and devices, with the reason each is (un)available")
    pd.add_argument("--json", action="store_true")
    pd.set_defaults(fn=cmd_devices)
    pr = sub.add_parser("run", help="stream a completion (default: the embedded synthetic model)")
    _add_session_args(pr)
    pr.add_argument("-p", "--prompt", default="The edge model is")
    pr.add_argument("-n", "--max-tokens", type=int, default=64)
    pr.add_argument("--temperature", type=float, default=0.0)
    pr.add_argument("--top-k", type=int, default=0)
    pr.add_argument("--top-p", type=float, default=1.0)
    pr.add_argument("--seed", type=int, default=None)
    pr.set_defaults(fn=cmd_run)
    pb = sub.add_parser("bench", help="load time, TTFT, prefill and decode tok/s, peak RSS, roofline %%")
    _add_session_args(pb)
    pb.add_argument("--backends", default="cpu", help="comma-separated backends to measure (default cpu)")
    pb.add_argument("--pp", default="128,512", help="prefill lengths (default 128,512)")
    pb.add_argument("--tg", type=int, default=128, help="decode tokens (default 128)")
    pb.add_argument("--repeat", type=int, default=3, help="repeats per measurement (median)")
    pb.add_argument("--tinyllama", action="store_true",
                    help="use a TinyLlama-1.1B-shaped synthetic Q4_0 model (generated once, ~620 MB)")
    pb.add_argument("--llama-cpp", choices=["auto", "off"], default="auto",
                    help="also measure llama.cpp through llama-cpp-python if installed (default auto)")
    pb.add_argument("--json-out", default=None, help="write the results as JSON to this file")
    pb.set_defaults(fn=cmd_bench)
    args = p.parse_args(argv)
    from .errors import XsilError

    try:
        return args.fn(args)
    except (XsilError, ValueError, FileNotFoundError) as e:
        print(f"xsil: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
