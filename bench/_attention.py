"""Shared code of the attention benchmarks (bench/attention_table.py, bench/test_attention_bench.py).

One decode step of one layer: a query per head attends to `ctx` cached tokens. To time what a model
sees (each layer's K/V evicted by the other layers before it is read again), the cache holds enough
layers that cycling through them streams >= COLD_BYTES from memory, and every timed call reads the
next layer. ONNX Runtime's com.microsoft.GroupQueryAttention gets the same treatment (one past K/V
buffer per layer, shared past/present buffers through IOBinding so it does not copy the cache).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

import xsil
from xsil import _core

SHAPES = {
    "tinyllama": dict(label="TinyLlama-1.1B (32 q / 4 kv heads, d=64)", n_heads=32, n_kv=4, hd=64),
    "llama7b": dict(label="Llama-2-7B (32 q / 32 kv heads, d=128)", n_heads=32, n_kv=32, hd=128),
}
COLD_BYTES = 256 << 20
MAX_LAYERS = 256


def median_time(fn, n_calls, min_calls=5, max_seconds=1.0):
    ts = []
    t_end = time.perf_counter() + max_seconds
    i = 0
    while i < n_calls or len(ts) < min_calls:
        t0 = time.perf_counter()
        fn(i)
        ts.append(time.perf_counter() - t0)
        i += 1
        if len(ts) >= min_calls and time.perf_counter() > t_end:
            break
    return float(np.median(ts))


def stream_read_gbs(threads, nbytes=256 << 20, reps=7):
    """Streaming-read bandwidth (GB/s) of this machine, measured now, with `threads` threads."""
    buf = np.ones(nbytes, np.uint8)
    _core._stream_read(buf, threads)
    t = median_time(lambda i: _core._stream_read(buf, threads), reps)
    return nbytes / t / 1e9


def n_layers_for(layer_bytes):
    return int(min(MAX_LAYERS, max(1, math.ceil(COLD_BYTES / layer_bytes))))


@dataclass
class DecodeCase:
    shape: str
    ctx: int
    dtype: str
    seed: int = 0
    cache: object = field(default=None, repr=False)
    n_layers: int = 0
    q: np.ndarray = field(default=None, repr=False)
    k: np.ndarray = field(default=None, repr=False)
    v: np.ndarray = field(default=None, repr=False)

    def build(self):
        s = SHAPES[self.shape]
        row = _core.kv_row_bytes(self.dtype, s["hd"]) * 2 * s["n_kv"]
        self.n_layers = n_layers_for(self.ctx * row)
        rng = np.random.default_rng(self.seed)
        self.cache = xsil.KVCache(self.n_layers, s["n_kv"], s["hd"], page_size=16, k_dtype=self.dtype,
                                  v_dtype=self.dtype, budget_tokens=(self.ctx + 15) // 16 * 16)
        seq = self.cache.add_sequence()
        self.cache.reserve(seq, self.ctx)
        self.k = rng.standard_normal((self.ctx, s["n_kv"], s["hd"]), dtype=np.float32)
        self.v = rng.standard_normal((self.ctx, s["n_kv"], s["hd"]), dtype=np.float32)
        for layer in range(self.n_layers):  # same values in every layer: only the bytes matter here
            self.cache.write(layer, seq, 0, self.k, self.v, k_rotated=True)
        self.seq = np.array([seq], np.int32)
        self.q = rng.standard_normal((1, s["n_heads"], s["hd"]), dtype=np.float32)
        return self

    @property
    def kv_bytes(self):
        """K/V bytes one decode step of one layer reads."""
        return self.ctx * self.cache.bytes_per_token // self.n_layers

    def step(self, layer, threads, isa=""):
        return _core.attention_decode(self.cache, layer % self.n_layers, self.seq, self.q, 0.0, True, threads, isa)

    def time(self, threads, isa="", calls=None):
        calls = calls or max(2 * self.n_layers, 20)
        for layer in range(self.n_layers):
            self.step(layer, threads, isa)
        return median_time(lambda i: self.step(i, threads, isa), calls, max_seconds=0.5)

    def reference(self):
        """Float64 reference of the step (q already rotated, K stored as given)."""
        from xsil.testing import attention_ref as R
        return R.attention(self.q, R.store(self.k, self.dtype), R.store(self.v, self.dtype), [self.ctx - 1])


def numpy_decode(q, K, V):
    """Plain NumPy decode step: q[H, d], K/V[Hkv, T, d] float32 -> [H, d]."""
    Hkv, T, d = K.shape
    H = q.shape[0]
    qg = q.reshape(Hkv, H // Hkv, d) * np.float32(1 / math.sqrt(d))
    s = qg @ K.transpose(0, 2, 1)
    s -= s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    return (p @ V).reshape(H, d)


def time_numpy(case: DecodeCase):
    K = np.ascontiguousarray(case.k.transpose(1, 0, 2))
    V = np.ascontiguousarray(case.v.transpose(1, 0, 2))
    q = case.q[0]
    out = numpy_decode(q, K, V)
    ref = case.reference()[0] if case.dtype == "f32" else None
    if ref is not None:
        assert np.abs(out - ref).max() < 1e-3
    return min(median_time(lambda i: numpy_decode(q, K, V), 10, max_seconds=0.5) for _ in range(2))


def ort_gqa_model(n_heads, n_kv, hd, dtype):
    from onnx import TensorProto, helper

    T = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("query", T, [1, 1, n_heads * hd]),
        helper.make_tensor_value_info("key", T, [1, 1, n_kv * hd]),
        helper.make_tensor_value_info("value", T, [1, 1, n_kv * hd]),
        helper.make_tensor_value_info("past_key", T, [1, n_kv, "max_seq", hd]),
        helper.make_tensor_value_info("past_value", T, [1, n_kv, "max_seq", hd]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
    ]
    outputs = [
        helper.make_tensor_value_info("output", T, [1, 1, n_heads * hd]),
        helper.make_tensor_value_info("present_key", T, [1, n_kv, "max_seq", hd]),
        helper.make_tensor_value_info("present_value", T, [1, n_kv, "max_seq", hd]),
    ]
    node = helper.make_node("GroupQueryAttention", [i.name for i in inputs], [o.name for o in outputs],
                            domain="com.microsoft", num_heads=n_heads, kv_num_heads=n_kv)
    graph = helper.make_graph([node], "gqa_decode", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


class OrtDecode:
    """ORT GroupQueryAttention decode step on the same shapes: past K/V of ctx-1 tokens per layer in a
    buffer of ctx tokens shared by past and present (no copy of the cache per step); the new token's
    K/V is the last cached token of the xsil case."""

    def __init__(self, case: DecodeCase, threads: int, dtype=np.float16):
        import onnxruntime as ort

        s = SHAPES[case.shape]
        self.dtype = dtype
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(ort_gqa_model(s["n_heads"], s["n_kv"], s["hd"], dtype).SerializeToString(),
                                         so, providers=["CPUExecutionProvider"])
        ctx = case.ctx
        past_k = np.ascontiguousarray(case.k.transpose(1, 0, 2)[None]).astype(dtype)  # [1, Hkv, ctx, d]
        past_v = np.ascontiguousarray(case.v.transpose(1, 0, 2)[None]).astype(dtype)
        self.bindings = []
        for _ in range(case.n_layers):
            pk = ort.OrtValue.ortvalue_from_numpy(past_k.copy())
            pv = ort.OrtValue.ortvalue_from_numpy(past_v.copy())
            b = self.sess.io_binding()
            b.bind_cpu_input("query", case.q.reshape(1, 1, -1).astype(dtype))
            b.bind_cpu_input("key", case.k[-1].reshape(1, 1, -1).astype(dtype))
            b.bind_cpu_input("value", case.v[-1].reshape(1, 1, -1).astype(dtype))
            b.bind_cpu_input("seqlens_k", np.array([ctx - 1], np.int32))
            b.bind_cpu_input("total_sequence_length", np.array(ctx, np.int32))
            b.bind_ortvalue_input("past_key", pk)
            b.bind_ortvalue_input("past_value", pv)
            b.bind_output("output")
            b.bind_ortvalue_output("present_key", pk)
            b.bind_ortvalue_output("present_value", pv)
            self.bindings.append((b, pk, pv))
        self.n_layers = case.n_layers
        self.case = case

    def step(self, layer):
        b = self.bindings[layer % self.n_layers][0]
        self.sess.run_with_iobinding(b)
        return b

    def check(self):
        """ORT's output equals the reference once (before timing)."""
        from xsil.testing import attention_ref as R

        out = self.step(0).copy_outputs_to_cpu()[0].astype(np.float64).reshape(self.case.q.shape)
        st = "f16" if self.dtype == np.float16 else "f32"
        want = R.attention(self.case.q, R.store(self.case.k, st), R.store(self.case.v, st), [self.case.ctx - 1])
        err = np.abs(out - want).max()
        assert err < (2e-2 if self.dtype == np.float16 else 1e-4), f"ORT GQA differs from the reference by {err}"
        return err

    def time(self):
        for layer in range(self.n_layers):
            self.step(layer)
        return median_time(self.step, max(2 * self.n_layers, 20), max_seconds=0.5)
