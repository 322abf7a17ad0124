"""`xsil bench`: load time, time to first token, prefill (ppN) and decode (tgN) tokens/s, peak RSS
and the decode roofline %, per backend, each measured in its own subprocess (so peak RSS is that
backend's alone), side by side with llama.cpp (llama-cpp-python) when it is installed.

Roofline: a decode step reads every weight matrix once, so decode tok/s x weight bytes per token is
the bandwidth it achieves; it is compared with the streaming-read bandwidth measured in the same run
(NumPy sums over a 1 GiB buffer, one slice per thread).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import numpy as np


def stream_read_gbs(threads: int, nbytes: int = 1 << 30, repeat: int = 5) -> float:
    """Streaming-read bandwidth (GB/s) with `threads` threads (NumPy sum releases the GIL)."""
    a = np.ones(nbytes // 4, np.float32)
    parts = np.array_split(a, threads)
    best = []
    for _ in range(repeat):
        ts = [threading.Thread(target=p.sum) for p in parts]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best.append(time.perf_counter() - t0)
    return a.nbytes / float(np.median(best)) / 1e9


def _median(xs: List[float]) -> float:
    return float(np.median(xs))


def _prompt_ids(n: int, vocab: int, rng: np.random.Generator, bos: Optional[int]) -> np.ndarray:
    ids = rng.integers(3, min(vocab, 30000), size=n).astype(np.int32)
    if bos is not None:
        ids[0] = bos
    return ids


def worker_xsil(cfg: Dict[str, Any]) -> Dict[str, Any]:
    import xsil
    from xsil.model.llama import peak_rss_bytes

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    s = xsil.Session(cfg["model"], backend=cfg["backend"], strict=True, n_ctx=cfg["n_ctx"], kv_dtype=cfg["kv_dtype"],
                     threads=cfg["threads"])
    load = time.perf_counter() - t0
    res: Dict[str, Any] = {"backend": cfg["backend"], "load_s": load}
    d = s.describe()
    res["isa"] = d.get("isa")
    res["device"] = str(d.get("device", ""))
    V = s.n_vocab
    bos = s.tokenizer.bos_id
    fwd_last = getattr(s, "_forward_last", None) or (lambda ids: s.forward(ids)[-1])
    # time to first token: a 128-token prompt on a fresh cache -> first sampled token
    ids = _prompt_ids(128, V, rng, bos)
    t1 = time.perf_counter()
    logits = fwd_last(ids)
    int(np.argmax(logits))
    res["ttft_s"] = time.perf_counter() - t1
    for pp in cfg["pp"]:
        ts = []
        for _ in range(cfg["repeat"]):
            s.reset()
            ids = _prompt_ids(pp, V, rng, bos)
            t = time.perf_counter()
            fwd_last(ids)
            ts.append(time.perf_counter() - t)
        res[f"pp{pp}_tok_s"] = pp / _median(ts)
    tg = cfg["tg"]
    ts = []
    for _ in range(cfg["repeat"]):
        s.reset()
        fwd_last(_prompt_ids(16, V, rng, bos))
        tok = 5
        t = time.perf_counter()
        for _ in range(tg):
            tok = int(np.argmax(fwd_last(np.array([tok], np.int32))))
        ts.append(time.perf_counter() - t)
    res[f"tg{tg}_tok_s"] = tg / _median(ts)
    if hasattr(s, "model"):
        res["weight_bytes_per_token"] = int(s.model.native.weight_bytes_per_token)
    else:  # other backends may report it themselves (ort-*: bytes of the exported weight matrices)
        wb = getattr(s, "weight_bytes_per_token", None)
        res["weight_bytes_per_token"] = int(wb) if wb else None
    res["peak_rss_bytes"] = peak_rss_bytes()
    s.close()
    return res


def worker_llamacpp(cfg: Dict[str, Any]) -> Dict[str, Any]:
    import llama_cpp  # noqa: F401
    from llama_cpp import Llama

    from xsil.model.llama import peak_rss_bytes

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    llm = Llama(model_path=cfg["model"], n_ctx=cfg["n_ctx"], n_threads=cfg["threads"],
                n_threads_batch=cfg["threads"], n_batch=512, verbose=False)
    res: Dict[str, Any] = {"backend": "llama.cpp", "load_s": time.perf_counter() - t0,
                           "isa": f"llama-cpp-python {llama_cpp.__version__}", "device": "cpu"}
    V = llm.n_vocab()
    bos = llm.token_bos()
    ids = _prompt_ids(128, V, rng, bos).tolist()
    t1 = time.perf_counter()
    llm.eval(ids)
    res["ttft_s"] = time.perf_counter() - t1
    for pp in cfg["pp"]:
        ts = []
        for _ in range(cfg["repeat"]):
            llm.reset()
            llm._ctx.kv_cache_clear() if hasattr(llm, "_ctx") else None
            ids = _prompt_ids(pp, V, rng, bos).tolist()
            t = time.perf_counter()
            llm.eval(ids)
            ts.append(time.perf_counter() - t)
        res[f"pp{pp}_tok_s"] = pp / _median(ts)
    tg = cfg["tg"]
    ts = []
    for _ in range(cfg["repeat"]):
        llm.reset()
        llm._ctx.kv_cache_clear() if hasattr(llm, "_ctx") else None
        llm.eval(_prompt_ids(16, V, rng, bos).tolist())
        t = time.perf_counter()
        for _ in range(tg):
            llm.eval([5])
        ts.append(time.perf_counter() - t)
    res[f"tg{tg}_tok_s"] = tg / _median(ts)
    res["peak_rss_bytes"] = peak_rss_bytes()
    return res


def _run_worker(kind: str, cfg: Dict[str, Any]) -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "xsil.benchmark", "--worker", kind, json.dumps(cfg)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return {"backend": cfg.get("backend", kind), "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(args: argparse.Namespace) -> int:
    from .model.default import TINYLLAMA, default_model_path, synthetic_model_path

    if args.model:
        model = args.model
    elif args.tinyllama:
        print("preparing the TinyLlama-shaped synthetic Q4_0 model (generated once, cached)...", file=sys.stderr)
        model = synthetic_model_path(TINYLLAMA)
    else:
        model = default_model_path()
        print(f"no model given: benchmarking the embedded SYNTHETIC default model {model}", file=sys.stderr)
    threads = args.threads or os.cpu_count() or 1
    pp = [int(x) for x in str(args.pp).split(",") if x]
    cfg = dict(model=model, n_ctx=max(args.n_ctx, max(pp) + args.tg + 64), kv_dtype=args.kv_dtype, threads=threads,
               pp=pp, tg=args.tg, repeat=args.repeat)
    bw = stream_read_gbs(threads)
    rows = []
    for b in [x.strip() for x in args.backends.split(",") if x.strip()]:
        rows.append(_run_worker("xsil", dict(cfg, backend=b)))
    llama_note = None
    if args.llama_cpp != "off":
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is not None:
            rows.append(_run_worker("llamacpp", cfg))
        else:
            llama_note = "llama.cpp: not measured (pip install llama-cpp-python to include it)"
    file_bytes = os.path.getsize(model)
    wbytes = next((r.get("weight_bytes_per_token") for r in rows if r.get("weight_bytes_per_token")), None)
    tgk = f"tg{args.tg}_tok_s"
    for r in rows:
        if "error" not in r and wbytes:
            r["decode_gbs"] = r[tgk] * wbytes / 1e9
            r["roofline_pct"] = 100 * r["decode_gbs"] / bw
    out = dict(model=model, file_bytes=file_bytes, threads=threads, stream_read_gbs=bw, results=rows)
    cols = ["load_s", "ttft_s"] + [f"pp{p}_tok_s" for p in pp] + [tgk, "peak_rss_bytes", "roofline_pct"]
    print(f"\nmodel {os.path.basename(model)} ({file_bytes / 1e6:.1f} MB), {threads} threads, "
          f"streaming read {bw:.1f} GB/s")
    print("| backend | device | isa | " + " | ".join(cols) + " |")
    print("|" + "---|" * (len(cols) + 3))
    for r in rows:
        if "error" in r:
            print(f"| {r['backend']} | error: {r['error']} |")
            continue
        vals = []
        for c in cols:
            v = r.get(c)
            if v is None:
                vals.append("-")
            elif c == "peak_rss_bytes":
                vals.append(f"{v / 1e6:.0f} MB")
            elif c.endswith("_s") and not c.endswith("tok_s"):
                vals.append(f"{v * 1e3:.0f} ms")
            else:
                vals.append(f"{v:.1f}")
        print(f"| {r['backend']} | {r.get('device', '')} | {r.get('isa', '')} | " + " | ".join(vals) + " |")
    if llama_note:
        print(llama_note)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)
    if not getattr(args, "quiet_json", False):
        print(json.dumps(out))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--worker":
        kind, cfg = sys.argv[2], json.loads(sys.argv[3])
        res = worker_xsil(cfg) if kind == "xsil" else worker_llamacpp(cfg)
        print(json.dumps(res))
    else:
        print("use: xsil bench", file=sys.stderr)
        sys.exit(2)
