"""Static-shape graphs for NPU execution providers (QNN HTP, Core ML): fixed context length C and
fixed chunk graphs (decode: 1 token, prefill: N tokens), KV cache as static inputs plus an
additive attention mask, only standard ONNX ops (and SimplifiedLayerNormalization, which the QNN
EP maps to its RmsNorm).

Per chunk of S tokens the graph takes

  ``input_ids`` int32 [1, S]; ``cos`` / ``sin`` fp32 [1, 1, S, D] (rotate-half form: cos repeated,
  sin with the sign folded in, so rope(x) = x*cos + swap_halves(x)*sin); ``attn_mask`` fp32
  [1, 1, rep*S, C+S] (0 or MASK, query rows grouped by KV head: rep = n_head / n_head_kv);
  ``past_key_{i}`` / ``past_value_{i}`` fp32 [1, n_head_kv, C, D]

and returns ``logits`` [1, S, V] and ``new_key_{i}`` / ``new_value_{i}`` [1, n_head_kv, S, D];
xsil writes the valid new rows into its own cache arrays (a short prefill chunk is right-padded and
its padding rows are masked and dropped).

Llama's "normal" RoPE rotates adjacent pairs (2i, 2i+1); the exporter permutes the rows of W_q
and W_k inside each head so those pairs become (i, i+D/2) and one rotate-half form serves both
llama and qwen2 (q.k is unchanged by a permutation applied to both). 1/sqrt(D) is folded into W_q.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np

from xsil.errors import ContextOverflowError

from . import weights as W
from .base import OrtSession, import_ort, placement_report, warn_partial
from .export import OPSET, ExternalData, GraphBuilder

STATIC_VERSION = 1
MASK = -100.0  # additive mask: exp(-100) is 0 in fp32, and it keeps a uint16 range fine-grained


def _dense(g, name: str) -> np.ndarray:
    """GGUF 2-D tensor -> fp32 [rows, cols]."""
    t = g.tensor_info(name)
    a = g.tensor(name)
    if t.type_name in ("F32", "F16"):
        a = np.asarray(a).reshape(-1, t.dims[0])
    return W.dequant_rows(a, t.type_name, t.dims[0])


def _vec(g, name: str) -> np.ndarray:
    return _dense(g, name).reshape(-1).astype(np.float32)


def neox_perm(n_heads: int, D: int) -> np.ndarray:
    """Row order turning adjacent-pair rotation into split-halves rotation, per head."""
    within = np.concatenate([np.arange(0, D, 2), np.arange(1, D, 2)])
    return (np.arange(n_heads)[:, None] * D + within[None, :]).reshape(-1)


def export_static(
    g, cfg, C: int, S: int, out_dir: str, name: str = "model", rmsnorm: str = "op"
) -> Dict[str, Any]:
    """Write ``<name>.onnx`` (+ ``<name>.bin``): the float static graph for chunk length S.
    rmsnorm: "op" = SimplifiedLayerNormalization (QNN maps it to RmsNorm), "decomposed" = standard
    ops only (Mul, ReduceMean, Add, Sqrt, Div), for providers without it (Core ML)."""
    import onnx
    from onnx import TensorProto, helper

    os.makedirs(out_dir, exist_ok=True)
    ext = ExternalData(os.path.join(out_dir, f"{name}.bin"))
    b = GraphBuilder(ext)
    H, Hk, D, E = cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.n_embd
    rep = H // Hk
    eps = float(cfg.rms_eps)
    neox = cfg.rope_mode == "neox"

    def c(nm, a):
        return b.const(nm, np.ascontiguousarray(a))

    def shape(nm, dims):
        return c(nm, np.array(dims, np.int64))

    def matmul(x, w_rows: np.ndarray, nm: str, bias: Optional[np.ndarray] = None) -> str:
        y = b.node(
            "MatMul", [x, c(nm + ".w", w_rows.T.astype(np.float32))], [nm if bias is None else nm + "_mm"]
        )
        b.matmul_bytes += w_rows.size  # int8 weights after QDQ
        if bias is not None:
            y = b.node("Add", [y, c(nm + ".b", bias.astype(np.float32))], [nm])
        return y

    def rope(x: str, nm: str) -> str:
        half = D // 2
        lo = b.node(
            "Slice",
            [
                x,
                c(nm + ".s0", np.array([0], np.int64)),
                c(nm + ".e0", np.array([half], np.int64)),
                c(nm + ".ax", np.array([3], np.int64)),
            ],
        )
        hi = b.node(
            "Slice",
            [
                x,
                c(nm + ".s1", np.array([half], np.int64)),
                c(nm + ".e1", np.array([D], np.int64)),
                nm + ".ax",
            ],
        )
        sw = b.node("Concat", [hi, lo], axis=3)
        return b.node("Add", [b.node("Mul", [x, "cos"]), b.node("Mul", [sw, "sin"])], [nm])

    def norm(x: str, w: np.ndarray, nm: str, out: str) -> str:
        if rmsnorm == "op":
            return b.node(
                "SimplifiedLayerNormalization", [x, c(nm, w)], [out], axis=-1, epsilon=eps, stash_type=1
            )
        ms = b.node(
            "ReduceMean", [b.node("Mul", [x, x]), c(nm + ".axes", np.array([-1], np.int64))], keepdims=1
        )
        rms = b.node("Sqrt", [b.node("Add", [ms, c(nm + ".eps", np.array(eps, np.float32))])])
        return b.node("Mul", [b.node("Div", [x, rms]), c(nm, w)], [out])

    try:
        x = b.node("Gather", [c("token_embd", _dense(g, "token_embd.weight")), "input_ids"], ["embd"], axis=0)
        perm_q = neox_perm(H, D) if not neox else np.arange(H * D)
        perm_k = neox_perm(Hk, D) if not neox else np.arange(Hk * D)
        scale = 1.0 / np.sqrt(D)
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            h = norm(x, _vec(g, p + "attn_norm.weight"), f"l{i}.attn_norm", f"l{i}.attn_in")
            biases = {
                t: (_vec(g, p + f"attn_{t}.bias") if p + f"attn_{t}.bias" in g.tensors else None)
                for t in "qkv"
            }
            wq = _dense(g, p + "attn_q.weight")[perm_q] * scale
            bq = biases["q"][perm_q] * scale if biases["q"] is not None else None
            wk = _dense(g, p + "attn_k.weight")[perm_k]
            bk = biases["k"][perm_k] if biases["k"] is not None else None
            q = matmul(h, wq, f"l{i}.q", bq)
            k = matmul(h, wk, f"l{i}.k", bk)
            v = matmul(h, _dense(g, p + "attn_v.weight"), f"l{i}.v", biases["v"])
            q = b.node(
                "Transpose", [b.node("Reshape", [q, shape(f"l{i}.qs", [1, S, H, D])])], perm=[0, 2, 1, 3]
            )
            k = b.node(
                "Transpose", [b.node("Reshape", [k, shape(f"l{i}.ks", [1, S, Hk, D])])], perm=[0, 2, 1, 3]
            )
            v = b.node(
                "Transpose",
                [b.node("Reshape", [v, shape(f"l{i}.vs", [1, S, Hk, D])])],
                perm=[0, 2, 1, 3],
                outputs=[f"new_value_{i}"],
            )
            q = rope(q, f"l{i}.q_rot")
            k = rope(k, f"new_key_{i}")
            kall = b.node("Concat", [f"past_key_{i}", k], axis=2)  # [1, Hk, C+S, D]
            vall = b.node("Concat", [f"past_value_{i}", v], axis=2)
            qg = b.node("Reshape", [q, shape(f"l{i}.qg", [1, Hk, rep * S, D])])
            sc = b.node("MatMul", [qg, b.node("Transpose", [kall], perm=[0, 1, 3, 2])])  # [1, Hk, rep*S, C+S]
            pr = b.node("Softmax", [b.node("Add", [sc, "attn_mask"])], axis=-1)
            o = b.node("MatMul", [pr, vall])  # [1, Hk, rep*S, D]
            o = b.node("Reshape", [o, shape(f"l{i}.os", [1, H, S, D])])
            o = b.node(
                "Reshape", [b.node("Transpose", [o], perm=[0, 2, 1, 3]), shape(f"l{i}.o2", [1, S, H * D])]
            )
            o = matmul(o, _dense(g, p + "attn_output.weight"), f"l{i}.attn_out")
            x = b.node("Add", [x, o], [f"l{i}.resid_a"])
            h2 = norm(x, _vec(g, p + "ffn_norm.weight"), f"l{i}.ffn_norm", f"l{i}.ffn_in")
            gate = matmul(h2, _dense(g, p + "ffn_gate.weight"), f"l{i}.gate")
            up = matmul(h2, _dense(g, p + "ffn_up.weight"), f"l{i}.up")
            act = b.node("Mul", [b.node("Mul", [gate, b.node("Sigmoid", [gate])]), up], [f"l{i}.act"])
            x = b.node(
                "Add", [x, matmul(act, _dense(g, p + "ffn_down.weight"), f"l{i}.ffn_out")], [f"l{i}.resid_f"]
            )
        y = norm(x, _vec(g, "output_norm.weight"), "output_norm", "final_norm")
        head = "output.weight" if "output.weight" in g.tensors else "token_embd.weight"
        matmul(y, _dense(g, head), "logits")
    finally:
        ext.close()

    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT32, [1, S]),
        helper.make_tensor_value_info("cos", f32, [1, 1, S, D]),
        helper.make_tensor_value_info("sin", f32, [1, 1, S, D]),
        helper.make_tensor_value_info("attn_mask", f32, [1, 1, rep * S, C + S]),
    ]
    outputs = [helper.make_tensor_value_info("logits", f32, [1, S, cfg.n_vocab])]
    for i in range(cfg.n_layer):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}_{i}", f32, [1, Hk, C, D]))
            outputs.append(helper.make_tensor_value_info(f"new_{kind}_{i}", f32, [1, Hk, S, D]))
    # SimplifiedLayerNormalization is an ORT op that onnx shape inference does not know: declare its
    # outputs so inference (and the QDQ calibrator, which needs every tensor's type) runs through
    norms = [f"l{i}.{k}" for i in range(cfg.n_layer) for k in ("attn_in", "ffn_in")] + ["final_norm"]
    vinfo = [helper.make_tensor_value_info(n, f32, [1, S, E]) for n in norms]
    graph = helper.make_graph(b.nodes, f"xsil_llama_static_S{S}", inputs, outputs, b.inits, value_info=vinfo)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="xsil",
        producer_version=str(STATIC_VERSION),
    )
    model.ir_version = 10
    onnx.save(model, os.path.join(out_dir, f"{name}.onnx"))
    return dict(nodes=len(b.nodes), weights_bytes=ext.nbytes, matmul_weight_bytes=b.matmul_bytes)


class StaticFeeds:
    """Host-side state of a static-graph session: the KV cache arrays xsil owns (fp32
    [1, Hk, C, D] per layer and kind), RoPE tables, and the per-chunk feeds."""

    def __init__(self, cfg, C: int):
        self.cfg, self.C = cfg, C
        H, Hk, D = cfg.n_head, cfg.n_head_kv, cfg.head_dim
        self.rep = H // Hk
        inv = cfg.rope_inv_freq()  # [half], with the frequency factors (rope_freqs.weight), if any
        th = np.arange(C, dtype=np.float64)[:, None] * cfg.rope_freq_scale * inv[None, :]
        cos, sin = np.cos(th), np.sin(th)
        self.cos = np.concatenate([cos, cos], 1).astype(np.float32)  # [C, D]
        self.sin = np.concatenate([-sin, sin], 1).astype(np.float32)
        self.kv = [np.zeros((1, Hk, C, D), np.float32) for _ in range(2 * cfg.n_layer)]
        self.past = 0

    def feeds(self, ids: np.ndarray, S: int) -> Dict[str, np.ndarray]:
        """Feeds for one chunk: ids (n <= S valid tokens) right-padded to S."""
        n, P, C = len(ids), self.past, self.C
        pad = np.zeros(S, np.int32)
        pad[:n] = ids
        pos = np.minimum(np.arange(P, P + S), C - 1)
        mask = np.full((S, C + S), MASK, np.float32)
        mask[:, :P] = 0  # the cache rows in use
        mask[:, C:] = np.where(np.tril(np.ones((S, S), bool)), 0, MASK)  # causal within the chunk
        mask = np.tile(mask[None], (self.rep, 1, 1)).reshape(1, 1, self.rep * S, C + S)
        f = {
            "input_ids": pad[None],
            "cos": self.cos[pos][None, None],
            "sin": self.sin[pos][None, None],
            "attn_mask": mask,
        }
        for i in range(self.cfg.n_layer):
            f[f"past_key_{i}"] = self.kv[2 * i]
            f[f"past_value_{i}"] = self.kv[2 * i + 1]
        return f

    def commit(self, outs: Dict[str, np.ndarray], n: int) -> None:
        """Write the n valid new K/V rows of a chunk into the cache and advance."""
        P = self.past
        for i in range(self.cfg.n_layer):
            self.kv[2 * i][:, :, P : P + n] = outs[f"new_key_{i}"][:, :, :n]
            self.kv[2 * i + 1][:, :, P : P + n] = outs[f"new_value_{i}"][:, :, :n]
        self.past = P + n


CALIBRATION_TEXT = (
    "The quick brown fox jumps over the lazy dog. A language model reads a prompt, one token after "
    "another, and predicts what comes next. Numbers like 42, 3.14 and 2026 appear in text, and so do "
    "names, places, code such as for i in range(10): print(i), and questions: what is the capital of France?"
)


def calibration_sequences(
    tokenizer, n_vocab: int, C: int, n_seq: int = 3, length: int = 40
) -> List[np.ndarray]:
    """A few token sequences to calibrate activation ranges on: tokenized text plus seeded random
    ids (the random ones widen the ranges to what arbitrary prompts produce)."""
    length = max(2, min(length, C))
    seqs = []
    try:
        t = np.asarray(tokenizer.encode(CALIBRATION_TEXT), np.int64)
        if len(t):
            seqs.append(t[:length])
    except Exception:
        pass
    rng = np.random.default_rng(1234)
    while len(seqs) < n_seq:
        seqs.append(rng.integers(0, n_vocab, size=length))
    return [np.asarray(s, np.int32) for s in seqs]


# -- calibration + QDQ -------------------------------------------------------------------------------
def calibrate_and_quantize(
    float_path: str,
    out_path: str,
    cfg,
    C: int,
    S: int,
    tokenizer,
    *,
    n_seq: int,
    length: int,
    activation_type: str,
    weight_type: str,
) -> Dict[str, Any]:
    """Run the float graph on ORT's CPU EP over a few calibration sequences (chunk by chunk, with a
    real KV cache), then write the QDQ graph: activations uint16/uint8 (asymmetric, min/max),
    weights int8/int4 per output channel (symmetric): a requantisation of the GGUF weights with
    one scale per row."""
    import logging

    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    fs = ort.InferenceSession(float_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in fs.get_outputs()]
    count = [0]

    def chunks():
        # one feed at a time, computed when the calibrator asks for it (a feed holds the whole KV
        # cache: materialising them all would take n_chunks x the cache)
        for seq in calibration_sequences(tokenizer, cfg.n_vocab, C, n_seq, length):
            st = StaticFeeds(cfg, C)
            for i in range(0, len(seq), S):
                ch = seq[i : i + S]
                f = st.feeds(ch, S)
                count[0] += 1
                yield f
                st.commit(dict(zip(names, fs.run(None, f), strict=True)), len(ch))  # advance the cache

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = chunks()

        def get_next(self):
            return next(self.it, None)

    at = {"uint16": QuantType.QUInt16, "uint8": QuantType.QUInt8}[activation_type]
    wt = {"int8": QuantType.QInt8, "int4": QuantType.QInt4, "int16": QuantType.QInt16}[weight_type]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice to the root logger
    try:
        qc = get_qnn_qdq_config(
            float_path, Reader(), activation_type=at, weight_type=wt, per_channel=True, weight_symmetric=True
        )
        quantize(float_path, out_path, qc)
    finally:
        root.setLevel(level)
    return dict(calibration_chunks=count[0], activation_type=activation_type, weight_type=weight_type)


# -- the session ------------------------------------------------------------------------------------


class StaticSession(OrtSession):
    """Chunked session over the fixed-shape graphs: ``decode`` (1 token) and ``prefill`` (N tokens,
    the last chunk right-padded). The KV cache is xsil's fp32 arrays, bound once as static inputs;
    each chunk's new K/V rows come back in bound output buffers and are written into the cache."""

    def _open_sessions(
        self, ort, backend, entry: str, threads, strict: bool, opts: Dict[str, Any]
    ) -> Dict[str, Any]:
        self.graphs = {}
        self.placement = {}
        extra: Dict[str, Any] = {}
        complete = True
        for kind, S in self.meta["chunks"].items():
            sess, ex = backend.create_static_session(
                ort, entry, kind, lambda: backend.session_options(ort, opts, threads, strict), opts
            )
            self.graphs[kind] = (sess, int(S))
            rep = placement_report(
                sess, None if backend.provider == "CPUExecutionProvider" else backend.provider
            )
            warn_partial(backend, rep, f"{kind} graph")
            complete = complete and rep.get("complete", True)
            self.placement[kind] = rep
            for k, v in ex.items():
                extra[f"{kind}_{k}"] = v
        self.placement["complete"] = complete
        return extra

    def _bind(self) -> None:
        ort = import_ort()
        cfg = self.config
        self.C = int(self.meta["n_ctx"])
        self.kv_dtype = "f32"
        self.state = StaticFeeds(cfg, self.C)
        self._kv = self.state.kv
        self._bound = {}
        for kind, (sess, S) in self.graphs.items():
            io = sess.io_binding()
            outs = {"logits": np.zeros((1, S, cfg.n_vocab), np.float32)}
            for i in range(cfg.n_layer):
                # the cache arrays themselves (OrtValues over their memory): bound once, updated in place
                io.bind_ortvalue_input(
                    f"past_key_{i}", ort.OrtValue.ortvalue_from_numpy(self.state.kv[2 * i])
                )
                io.bind_ortvalue_input(
                    f"past_value_{i}", ort.OrtValue.ortvalue_from_numpy(self.state.kv[2 * i + 1])
                )
                for kv in ("key", "value"):
                    outs[f"new_{kv}_{i}"] = np.zeros((1, cfg.n_head_kv, S, cfg.head_dim), np.float32)
            for name, a in outs.items():
                io.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(a))
            self._bound[kind] = (io, outs)

    @property
    def n_past(self) -> int:
        return self.state.past

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        n = int(ids.shape[0])
        P = self.state.past
        if P + n > self.C:
            raise ContextOverflowError(
                f"[kv_cache] {n} new token(s) after {P} do not fit the KV budget "
                f"n_ctx={self.C} ({self.backend_name}: fixed context length)"
            )
        out = np.empty((n, self.n_vocab), np.float32)
        i = 0
        while i < n:
            kind = "decode" if n - i == 1 or "prefill" not in self.graphs else "prefill"
            sess, S = self.graphs[kind]
            m = min(S, n - i)
            io, outs = self._bound[kind]
            for k, v in self.state.feeds(ids[i : i + m], S).items():
                if not k.startswith("past_"):
                    io.bind_cpu_input(k, v)
            sess.run_with_iobinding(io)
            self.state.commit(outs, m)
            out[i : i + m] = outs["logits"][0, :m]
            i += m
        self._mark_first()
        return out

    def _forward_last(self, ids: np.ndarray) -> np.ndarray:
        return self._forward(np.asarray(ids, np.int32))[-1]  # fixed-shape graphs: every row is computed

    def _reset(self) -> None:
        self.state.past = 0  # masked rows are never read: no clearing needed

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d["memory"] = dict(
            kv_bytes=self.kv_bytes,
            kv_dtype="f32",
            kv_dtype_requested=self.kv_dtype_requested,
            kv_note="host fp32 cache fed as static graph inputs (quantized on entry by QDQ)",
            n_ctx=self.C,
            chunks={k: s for k, (_, s) in self.graphs.items()},
            weight_bytes=self.meta.get("weights_bytes"),
            weight_bytes_per_token=self.weight_bytes_per_token,
        )
        d["quantization"] = self.meta.get("quantization")
        return d
