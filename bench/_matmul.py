"""Shared code of the matmul benchmarks (bench/matmul_table.py and bench/test_matmul_bench.py).

Backends, all on the same Q4_0 weights:
  * ``xsil-<tier>``: xsil.matmul on weights packed for that tier (``xsil-<tier>-rows``: GGUF rows).
  * ``ort``: ONNX Runtime ``com.microsoft.MatMulNBits`` (bits=4, block_size=32, accuracy_level=4),
    weights converted from Q4_0 (checked against x @ dequant(W).T before timing).
  * ``numpy``: numpy fp32 matmul on the dequantized weights.

Metrics: GEMV (M=1) as GB/s of weight bytes read (each backend's own weight bytes: 0.5625 B/weight
for Q4_0, 0.625 for MatMulNBits' nibbles + fp32 scales, 4 for fp32), hot (one matrix, repeated)
and cold (cycling through >= 1 GiB of distinct matrices, like a decode step); GEMM as GFLOP/s
(2*M*N*K). The streaming-read roofline is a numpy fp32 GEMV over a 1 GiB matrix with the same
thread count (OpenBLAS sgemv reads the matrix once).
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

import xsil

LLAMA = [(4096, 4096), (4096, 11008), (11008, 4096)]          # (K, N)
TINYLLAMA = [(2048, 2048), (2048, 5632), (5632, 2048)]
ALL_SHAPES = LLAMA + TINYLLAMA
GIB = 1 << 30


def simd_tiers() -> list[str]:
    return [t for t in xsil.cpu_info()["available_tiers"] if t != "ref"]


# --- weights -------------------------------------------------------------------------------------
def random_q4_0(N: int, K: int, rng: np.random.Generator) -> np.ndarray:
    """Valid random Q4_0 rows (uniform nibbles, fp16 scales ~ 0.002..0.006): uint8 [N, K/32*18]."""
    nb = N * K // 32
    b = rng.integers(0, 256, size=(nb, 18), dtype=np.uint8)
    d = (rng.uniform(0.5, 1.5, nb) * 0.004).astype(np.float16)
    b[:, 0:2] = d.view(np.uint8).reshape(nb, 2)
    return b.reshape(N, K // 32 * 18)


def dequant_q4_0(wq: np.ndarray, K: int) -> np.ndarray:
    N = wq.shape[0]
    b = wq.reshape(N, K // 32, 18)
    d = b[:, :, 0:2].copy().view(np.float16).astype(np.float32)  # [N, nb, 1]
    qs = b[:, :, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).astype(np.float32) - 8.0
    return (q * d).reshape(N, K)


def q4_0_to_matmulnbits(wq: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 rows -> MatMulNBits (B uint8 [N, nb, 16], scales fp32 [N*nb]); default zero point 8.

    Q4_0 byte j holds element j (low nibble) and j+16 (high); MatMulNBits byte i holds elements
    2i (low) and 2i+1 (high) of the block, both as unsigned q with w = scale * (q - 8)."""
    N = wq.shape[0]
    nb = K // 32
    b = wq.reshape(N, nb, 18)
    scales = b[:, :, 0:2].copy().view(np.float16).astype(np.float32).reshape(N * nb)
    qs = b[:, :, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2)          # [N, nb, 32] element order
    packed = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).astype(np.uint8)  # [N, nb, 16]
    return np.ascontiguousarray(packed), scales


# --- ONNX Runtime MatMulNBits ----------------------------------------------------------------------
def ort_session(mats: list[tuple[np.ndarray, np.ndarray]], K: int, N: int, threads: int):
    """One session with one MatMulNBits node per weight matrix, all reading input A [M, K];
    outputs Y0..Y{n-1}. Running it once performs len(mats) matmuls (cold-cache decode pattern)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, outs = [], [], []
    for i, (B, S) in enumerate(mats):
        inits.append(numpy_helper.from_array(B, f"B{i}"))
        inits.append(numpy_helper.from_array(S, f"S{i}"))
        nodes.append(helper.make_node("MatMulNBits", ["A", f"B{i}", f"S{i}"], [f"Y{i}"], domain="com.microsoft",
                                      K=K, N=N, bits=4, block_size=32, accuracy_level=4))
        outs.append(helper.make_tensor_value_info(f"Y{i}", TensorProto.FLOAT, ["M", N]))
    graph = helper.make_graph(nodes, "q4", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", K])], outs,
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    blob = model.SerializeToString()
    del model, inits
    return ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])


def check_ort_conversion(rng: np.random.Generator, K: int = 512, N: int = 48, M: int = 3) -> float:
    """The converted ORT output must equal x @ dequant(W).T to fp tolerance (accuracy_level=4
    quantizes activations to int8 per block, so the tolerance is the int8 bound). Returns max err."""
    wq = random_q4_0(N, K, rng)
    x = rng.standard_normal((M, K)).astype(np.float32)
    sess = ort_session([q4_0_to_matmulnbits(wq, K)], K, N, 1)
    got = sess.run(None, {"A": x})[0]
    w = dequant_q4_0(wq, K).astype(np.float64)
    want = x.astype(np.float64) @ w.T
    # int8 activation quantization per block: |err| <= sum_blocks amax/127/2 * sum|w| (+ fp slack)
    amax = np.abs(x.reshape(M, K // 32, 32)).max(axis=2)
    bound = (amax / 127 / 2) @ np.abs(w).reshape(N, K // 32, 32).sum(axis=2).T
    err = np.abs(got - want)
    assert (err <= 1.01 * bound + 1e-4 * (np.abs(x) @ np.abs(w).T)).all(), f"ORT conversion mismatch {err.max()}"
    # also check the fp32 path (accuracy_level=0 would need another session; the bound above already
    # rules out any nibble-order or zero-point mistake, which would give errors ~ |w| * |x|)
    return float(err.max())


# --- timing --------------------------------------------------------------------------------------
def measure(fn: Callable[[], object], min_repeat: int = 5, min_time: float = 0.3, max_repeat: int = 200) -> float:
    """Median wall time of fn() in seconds, after one warm-up call."""
    fn()
    ts: list[float] = []
    t_start = time.perf_counter()
    while len(ts) < min_repeat or (time.perf_counter() - t_start < min_time and len(ts) < max_repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def stream_read_gbs(threads: int, nbytes: int = GIB) -> float:
    """Streaming-read roofline: numpy fp32 GEMV (OpenBLAS sgemv) over an nbytes matrix."""
    from threadpoolctl import threadpool_limits

    a = np.ones((nbytes // 4 // 4096, 4096), np.float32)
    v = np.ones(4096, np.float32)
    with threadpool_limits(threads):  # entered once, outside the timed calls
        t = measure(lambda: a @ v, min_repeat=5, min_time=1.0, max_repeat=15)
    del a
    gc.collect()
    return nbytes / t / 1e9


@dataclass
class Result:
    kind: str         # "gemv-hot", "gemv-cold", "gemm"
    backend: str
    K: int
    N: int
    M: int
    threads: int
    seconds: float    # median per matmul
    wbytes: int       # weight bytes read per matmul (this backend's format)

    @property
    def gbs(self) -> float:
        return self.wbytes / self.seconds / 1e9

    @property
    def gflops(self) -> float:
        return 2.0 * self.M * self.N * self.K / self.seconds / 1e9


# --- cases ---------------------------------------------------------------------------------------
class Matrices:
    """n distinct Q4_0 matrices of one shape with their per-backend forms (built lazily)."""

    def __init__(self, K: int, N: int, n: int, seed: int = 0):
        self.K, self.N, self.n = K, N, n
        rng = np.random.default_rng(seed)
        self.q4 = [random_q4_0(N, K, rng) for _ in range(n)]
        self._packed: dict[str, list] = {}

    @property
    def q4_bytes(self) -> int:
        return self.q4[0].nbytes

    def packed(self, tier: str) -> list:
        if tier not in self._packed:
            # Packed in place into a numpy-owned copy, as a model loader packs its private mapping
            # (numpy also asks for transparent huge pages on large arrays, like a loader can).
            self._packed[tier] = [xsil.pack(w.copy(), "Q4_0", isa=tier, inplace=True) for w in self.q4]
        return self._packed[tier]


def xsil_fn(mats: Matrices, tier: str, x: np.ndarray, threads: int, packed: bool = True) -> Callable[[], None]:
    ws = mats.packed(tier) if packed else mats.q4
    isa = None if packed else tier
    if packed and ws[0] is None:  # tier without a packed layout: GGUF rows
        ws, isa = mats.q4, tier

    def run():
        for w in ws:
            xsil.matmul(x, w, "Q4_0", threads=threads, isa=isa)

    return run


def ort_fn(mats: Matrices, x: np.ndarray, threads: int):
    sess = ort_session([q4_0_to_matmulnbits(w, mats.K) for w in mats.q4], mats.K, mats.N, threads)
    feeds = {"A": x}
    return (lambda: sess.run(None, feeds)), sess


def blas_threads(threads: int):
    """Context manager limiting numpy's BLAS to `threads` (entered once, outside the timed code:
    threadpoolctl's enter/exit costs far more than a small GEMV)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(threads)


def numpy_fn(wf: list[np.ndarray], x: np.ndarray, threads: int) -> Callable[[], None]:
    """fp32 x @ W.T over the matrices; call it inside blas_threads(threads)."""

    def run():
        for w in wf:
            x @ w.T

    return run


def cold_count(bytes_per_matrix: int, total: int = GIB) -> int:
    return max(2, math.ceil(total / bytes_per_matrix))


def interleaved(fns: dict[str, Callable[[], object]], min_rounds: int, min_time: float,
                max_rounds: int = 200) -> dict[str, float]:
    """Median seconds per call of each fn, measured in interleaved rounds (one call of every fn per
    round, after one warm-up call each), so that load from other processes on a shared machine
    hits all backends alike and the ratios stay meaningful."""
    for f in fns.values():
        f()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    t0 = time.perf_counter()
    r = 0
    while r < min_rounds or (time.perf_counter() - t0 < min_time and r < max_rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t)
        r += 1
    return {k: statistics.median(v) for k, v in ts.items()}


ORT_BYTES = lambda N, K: N * K // 2 + N * K // 32 * 4  # noqa: E731  MatMulNBits nibbles + fp32 scales


def bench_gemv(K: int, N: int, threads_list: list[int], tiers: list[str], cold: bool, rows_too: bool = False,
               with_ort: bool = True, with_numpy: bool = True, roofline: Optional[np.ndarray] = None,
               log=print) -> list[Result]:
    """GEMV (M=1). Hot: one matrix called repeatedly. Cold: >= 1 GiB of distinct matrices per
    backend; each timed call walks all of them once (seconds are reported per matrix).
    All backends (and the roofline sgemv over `roofline`, if given) are timed in interleaved rounds."""
    kind = "gemv-cold" if cold else "gemv-hot"
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, K)).astype(np.float32)
    q4b = N * K // 32 * 18
    n = cold_count(q4b) if cold else 1
    mats = Matrices(K, N, n)
    f32b = N * K * 4
    nf = cold_count(f32b) if cold else 1
    wf = [np.asarray(rng.standard_normal((N, K)), np.float32) for _ in range(nf)] if with_numpy else []
    v = np.ones(roofline.shape[1], np.float32) if roofline is not None else None
    out: list[Result] = []
    for th in threads_list:
        fns: dict[str, Callable[[], object]] = {}
        per: dict[str, tuple[int, int]] = {}  # name -> (matrices per call, weight bytes per matrix)
        for tier in tiers:
            fns[f"xsil-{tier}"] = xsil_fn(mats, tier, x, th)
            per[f"xsil-{tier}"] = (n, q4b)
            if rows_too:
                fns[f"xsil-{tier}-rows"] = xsil_fn(mats, tier, x, th, packed=False)
                per[f"xsil-{tier}-rows"] = (n, q4b)
        sess = None
        if with_ort:
            fns["ort"], sess = ort_fn(mats, x, th)
            per["ort"] = (n, ORT_BYTES(N, K))
        if with_numpy:
            fns["numpy"] = numpy_fn(wf, x, th)
            per["numpy"] = (nf, f32b)
        if roofline is not None:
            fns["roofline"] = lambda: roofline @ v
            per["roofline"] = (1, roofline.nbytes)
        with blas_threads(th):
            med = interleaved(fns, min_rounds=5 if cold else 20, min_time=1.0 if cold else 0.5)
        for name, t in med.items():
            cnt, wb = per[name]
            out.append(Result(kind, name, K, N, 1, th, t / cnt, wb))
            log(out[-1])
        del fns, sess
        gc.collect()
    del mats, wf
    gc.collect()
    return out


def bench_gemm(K: int, N: int, M: int, threads_list: list[int], tiers: list[str], with_ort: bool = True,
               with_numpy: bool = True, log=print) -> list[Result]:
    """GEMM: all backends timed in interleaved rounds, per thread count."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((M, K)).astype(np.float32)
    mats = Matrices(K, N, 1)
    q4b = mats.q4_bytes
    wf = dequant_q4_0(mats.q4[0], K) if with_numpy else None
    out: list[Result] = []
    for th in threads_list:
        fns: dict[str, Callable[[], object]] = {}
        wbytes: dict[str, int] = {}
        for tier in tiers:
            fns[f"xsil-{tier}"] = xsil_fn(mats, tier, x, th)
            wbytes[f"xsil-{tier}"] = q4b
        sess = None
        if with_ort:
            fns["ort"], sess = ort_fn(mats, x, th)
            wbytes["ort"] = ORT_BYTES(N, K)
        if with_numpy:
            fns["numpy"] = numpy_fn([wf], x, th)
            wbytes["numpy"] = N * K * 4
        with blas_threads(th):
            med = interleaved(fns, min_rounds=3, min_time=1.0)
        for name, t in med.items():
            out.append(Result("gemm", name, K, N, M, th, t, wbytes[name]))
            log(out[-1])
        del fns, sess
        gc.collect()
    return out
