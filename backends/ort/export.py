"""GGUF Llama-family model -> ONNX graph (no PyTorch): weights are converted from the GGUF blocks
directly (see :mod:`.weights`) and streamed into an external-data file, so exporting a large model
never holds a second copy of the weights in memory.

The dynamic-shape graph (``ort-cpu``):

inputs
  ``input_ids`` int64 [1, S]; ``seqlens_k`` int32 [1] (= past + S - 1); ``total_sequence_length``
  int32 scalar (= past + S); ``cos_cache`` / ``sin_cache`` fp32 [n_ctx, head_dim/2] (bound once per
  session); ``past_key_{i}`` / ``past_value_{i}`` fp32 [1, n_head_kv, n_ctx, head_dim]
outputs
  ``logits`` fp32 [1, S, n_vocab]; ``present_key_{i}`` / ``present_value_{i}`` (same buffers as the
  past ones: the session binds the *same* OrtValue to both, the GroupQueryAttention shared-buffer
  mode, so a step writes only the new rows and nothing is copied)

per layer: SkipSimplifiedLayerNormalization (residual add + RMSNorm) -> one MatMulNBits for the
packed QKV projection -> GroupQueryAttention (packed QKV, do_rotary with the llama "normal" =
interleaved pairs or qwen2 "neox" = split halves rotation) -> MatMulNBits -> Skip RMSNorm ->
MatMulNBits gate/up -> x*sigmoid(x)*up -> MatMulNBits down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from . import weights as W

EXPORT_VERSION = 2
OPSET = 21
ROW_CHUNK = 4096  # output rows converted per slice


@dataclass
class ExportOptions:
    accuracy_level: int = 4  # MatMulNBits accuracy_level (4 = int8 activations)
    fuse_qkv: bool = True
    kv_dtype: str = "f32"  # "f16": attention (GroupQueryAttention and its cache) in fp16

    def key(self) -> Dict[str, object]:
        return dict(
            accuracy_level=self.accuracy_level,
            fuse_qkv=self.fuse_qkv,
            kv_dtype=self.kv_dtype,
            v=EXPORT_VERSION,
        )


class ExternalData:
    """Appends tensors to one external-data file and makes TensorProtos that point into it."""

    def __init__(self, path: str):
        self.path = path
        self.f = open(path, "wb")
        self.nbytes = 0

    def _align(self, n: int) -> None:
        pad = (-self.nbytes) % n
        if pad:
            self.f.write(b"\0" * pad)
            self.nbytes += pad

    def begin(self, big: bool) -> int:
        self._align(4096 if big else 64)
        return self.nbytes

    def write(self, a: np.ndarray) -> None:
        b = np.ascontiguousarray(a)
        self.f.write(b.data if b.flags.c_contiguous else b.tobytes())
        self.nbytes += b.nbytes

    def tensor(self, name: str, dtype, dims, offset: int):
        from onnx import TensorProto, helper

        t = TensorProto()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        t.dims.extend(int(d) for d in dims)
        t.data_location = TensorProto.EXTERNAL
        length = self.nbytes - offset
        for k, v in (
            ("location", os.path.basename(self.path)),
            ("offset", str(offset)),
            ("length", str(length)),
        ):
            e = t.external_data.add()
            e.key, e.value = k, v
        return t

    def add(self, name: str, a: np.ndarray):
        a = np.ascontiguousarray(a)
        off = self.begin(a.nbytes >= 1 << 16)
        self.write(a)
        return self.tensor(name, a.dtype, a.shape, off)

    def close(self) -> None:
        if self.f:
            self.f.close()
            self.f = None


class GraphBuilder:
    def __init__(self, ext: ExternalData):
        self.ext = ext
        self.nodes: List = []
        self.inits: List = []
        self._n = 0
        self.matmul_bytes = 0  # bytes a decode step reads for its weight matrices

    def uid(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def node(self, op: str, inputs, outputs=None, domain: str = "", name: Optional[str] = None, **attrs):
        from onnx import helper

        if outputs is None:
            outputs = [self.uid(op.lower())]
        elif isinstance(outputs, int):
            outputs = [self.uid(op.lower()) for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(
                op, list(inputs), list(outputs), name=name or self.uid(op), domain=domain, **attrs
            )
        )
        return outputs[0] if len(outputs) == 1 else outputs

    def const(self, name: str, a: np.ndarray) -> str:
        from onnx import numpy_helper

        a = np.asarray(a)
        if a.nbytes >= 1024:
            self.inits.append(self.ext.add(name, a))
        else:
            self.inits.append(numpy_helper.from_array(a, name))
        return name


def _rows_chunks(rows: np.ndarray):
    for i in range(0, rows.shape[0], ROW_CHUNK):
        yield rows[i : i + ROW_CHUNK]


def _stream_nbits(ext: ExternalData, name: str, parts, K: int, fmt: str):
    """Write the MatMulNBits inputs of the row-concatenation of `parts` (GGUF row arrays of one
    format) slice by slice; returns (B proto, scales proto, zero_points proto or None, N)."""
    N = sum(p.shape[0] for p in parts)
    nb = K // W.QK
    blob = W.QK * W.NBITS[fmt] // 8
    protos = {}
    for key, dtype, shape in (
        ("B", np.uint8, (N, nb, blob)),
        ("scales", np.float32, (N, nb)),
        ("zero_points", np.float32, (N, nb)),
    ):
        if key == "zero_points" and fmt != "Q4_K":
            continue
        off = ext.begin(True)
        for p in parts:
            for ch in _rows_chunks(p):
                ext.write(W.nbits_rows(ch, fmt, K)[key])
        protos[key] = ext.tensor(f"{name}.{key}", dtype, shape, off)
    return protos["B"], protos["scales"], protos.get("zero_points"), N


def _stream_dense_t(ext: ExternalData, name: str, parts, fmts, K: int):
    """fp32 MatMul weight [K, N] (transposed) of the row-concatenation of `parts`."""
    full = np.concatenate([W.dequant_rows(p, f, K) for p, f in zip(parts, fmts, strict=True)], axis=0)
    return ext.add(name, np.ascontiguousarray(full.T)), full.shape[0]


class LlamaExporter:
    """Reads tensors from an open GGUFFile + LlamaConfig and writes ``model.onnx`` + ``weights.bin``."""

    def __init__(self, g, cfg, opts: ExportOptions):
        self.g, self.cfg, self.opts = g, cfg, opts

    # -- weights ---------------------------------------------------------------------------------
    def _rows(self, name: str):
        t = self.g.tensor_info(name)
        return self.g.tensor(name), t.type_name, t.dims[0]

    def _vec(self, name: str) -> np.ndarray:
        a, fmt, K = self._rows(name)
        return W.dequant_rows(np.asarray(a).reshape(1, -1) if fmt in ("F32", "F16") else a, fmt, K).reshape(
            -1
        )

    def linear(
        self, b: GraphBuilder, x: str, names: List[str], out_name: str, bias: Optional[np.ndarray] = None
    ) -> str:
        """y = x @ concat(W_names).T (+ bias): one MatMulNBits when every part is the same block
        format, else an fp32 MatMul on dequantized weights."""
        parts = [self._rows(n) for n in names]
        fmts = {p[1] for p in parts}
        K = parts[0][2]
        if len(fmts) == 1 and next(iter(fmts)) in W.NBITS:
            fmt = next(iter(fmts))
            B, S, Z, N = _stream_nbits(b.ext, out_name, [p[0] for p in parts], K, fmt)
            b.inits += [B, S] + ([Z] if Z is not None else [])
            b.matmul_bytes += N * (K // W.QK) * (W.QK * W.NBITS[fmt] // 8 + 4 + (4 if Z is not None else 0))
            ins = [x, B.name, S.name, Z.name if Z is not None else ""]
            if bias is not None:
                ins += ["", b.const(out_name + ".bias", bias.astype(np.float32))]
            while ins and ins[-1] == "":
                ins.pop()
            return b.node(
                "MatMulNBits",
                ins,
                [out_name],
                domain="com.microsoft",
                K=K,
                N=N,
                bits=W.NBITS[fmt],
                block_size=W.QK,
                accuracy_level=self.opts.accuracy_level,
            )
        Wt, N = _stream_dense_t(b.ext, out_name + ".weight", [p[0] for p in parts], [p[1] for p in parts], K)
        b.inits.append(Wt)
        b.matmul_bytes += K * N * 4
        y = b.node("MatMul", [x, Wt.name], [out_name if bias is None else out_name + "_nb"])
        if bias is not None:
            y = b.node("Add", [y, b.const(out_name + ".bias", bias.astype(np.float32))], [out_name])
        return y

    def embedding(self, b: GraphBuilder, ids: str) -> str:
        a, fmt, K = self._rows("token_embd.weight")
        if fmt in ("Q4_0", "Q8_0"):
            off = b.ext.begin(True)
            for ch in _rows_chunks(a):
                b.ext.write(W.nbits_rows(ch, fmt, K)["B"].reshape(ch.shape[0], -1))
            data = b.ext.tensor("token_embd.qdata", np.uint8, (a.shape[0], K * W.NBITS[fmt] // 8), off)
            off = b.ext.begin(True)
            for ch in _rows_chunks(a):
                b.ext.write(W.nbits_rows(ch, fmt, K)["scales"])
            scales = b.ext.tensor("token_embd.scales", np.float32, (a.shape[0], K // W.QK), off)
            b.inits += [data, scales]
            return b.node(
                "GatherBlockQuantized",
                [data.name, ids, scales.name],
                ["embd"],
                domain="com.microsoft",
                bits=W.NBITS[fmt],
                block_size=W.QK,
                gather_axis=0,
                quantize_axis=1,
            )
        # other formats: fp32 table (F32 exact; F16/Q4_K exact dequantization, 4 bytes/weight)
        off = b.ext.begin(True)
        rows = a if fmt not in ("F32", "F16") else np.asarray(a).reshape(-1, K)
        for ch in _rows_chunks(rows):
            b.ext.write(W.dequant_rows(ch, fmt, K))
        t = b.ext.tensor("token_embd.weight", np.float32, (rows.shape[0], K), off)
        b.inits.append(t)
        return b.node("Gather", [t.name, ids], ["embd"], axis=0)

    # -- graph -----------------------------------------------------------------------------------
    def export(self, out_dir: str) -> Dict[str, object]:
        import onnx
        from onnx import TensorProto, helper

        kvt = TensorProto.FLOAT16 if self.opts.kv_dtype == "f16" else TensorProto.FLOAT
        cfg, g = self.cfg, self.g
        os.makedirs(out_dir, exist_ok=True)
        ext = ExternalData(os.path.join(out_dir, "weights.bin"))
        b = GraphBuilder(ext)
        H, Hk, D = cfg.n_head, cfg.n_head_kv, cfg.head_dim
        eps = float(cfg.rms_eps)
        try:
            x = self.embedding(b, "input_ids")
            ffn_out = None
            for i in range(cfg.n_layer):
                p = f"blk.{i}."
                attn_norm = b.const(p + "attn_norm", self._vec(p + "attn_norm.weight").astype(np.float32))
                if ffn_out is None:
                    h = b.node(
                        "SimplifiedLayerNormalization",
                        [x, attn_norm],
                        [f"l{i}.attn_in"],
                        axis=-1,
                        epsilon=eps,
                        stash_type=1,
                    )
                else:
                    h, _, _, x = b.node(
                        "SkipSimplifiedLayerNormalization",
                        [ffn_out, x, attn_norm],
                        [f"l{i}.attn_in", "", "", f"l{i}.resid_a"],
                        domain="com.microsoft",
                        epsilon=eps,
                    )
                bias = None
                if p + "attn_q.bias" in g.tensors:
                    bias = np.concatenate([self._vec(p + f"attn_{t}.bias") for t in "qkv"])
                qkv_names = [p + f"attn_{t}.weight" for t in "qkv"]
                same = len({g.tensor_info(n).type_name for n in qkv_names}) == 1
                if self.opts.fuse_qkv and same:
                    q = self.linear(b, h, qkv_names, f"l{i}.qkv", bias)
                    k = v = ""
                else:
                    bq = bk = bv = None
                    if bias is not None:
                        bq, bk, bv = np.split(bias, [H * D, H * D + Hk * D])
                    q = self.linear(b, h, [qkv_names[0]], f"l{i}.q", bq)
                    k = self.linear(b, h, [qkv_names[1]], f"l{i}.k", bk)
                    v = self.linear(b, h, [qkv_names[2]], f"l{i}.v", bv)
                f16 = self.opts.kv_dtype == "f16"
                if f16:  # GQA keeps its cache in the activation type: run attention in fp16
                    q, k, v = (b.node("Cast", [t], to=TensorProto.FLOAT16) if t else "" for t in (q, k, v))
                attn = b.node(
                    "GroupQueryAttention",
                    [
                        q,
                        k,
                        v,
                        f"past_key_{i}",
                        f"past_value_{i}",
                        "seqlens_k",
                        "total_sequence_length",
                        "cos_cache",
                        "sin_cache",
                    ],
                    [f"l{i}.attn", f"present_key_{i}", f"present_value_{i}"],
                    domain="com.microsoft",
                    num_heads=H,
                    kv_num_heads=Hk,
                    do_rotary=1,
                    rotary_interleaved=1 if cfg.rope_mode == "normal" else 0,
                    scale=float(1.0 / np.sqrt(D)),
                )[0]
                if f16:
                    attn = b.node("Cast", [attn], to=TensorProto.FLOAT)
                o = self.linear(b, attn, [p + "attn_output.weight"], f"l{i}.attn_out")
                ffn_norm = b.const(p + "ffn_norm", self._vec(p + "ffn_norm.weight").astype(np.float32))
                h2, _, _, x = b.node(
                    "SkipSimplifiedLayerNormalization",
                    [o, x, ffn_norm],
                    [f"l{i}.ffn_in", "", "", f"l{i}.resid_f"],
                    domain="com.microsoft",
                    epsilon=eps,
                )
                gate = self.linear(b, h2, [p + "ffn_gate.weight"], f"l{i}.gate")
                up = self.linear(b, h2, [p + "ffn_up.weight"], f"l{i}.up")
                act = b.node("Mul", [b.node("Mul", [gate, b.node("Sigmoid", [gate])]), up])
                ffn_out = self.linear(b, act, [p + "ffn_down.weight"], f"l{i}.ffn_out")
            out_norm = b.const("output_norm", self._vec("output_norm.weight").astype(np.float32))
            y, _, _, _ = b.node(
                "SkipSimplifiedLayerNormalization",
                [ffn_out, x, out_norm],
                ["final_norm", "", "", ""],
                domain="com.microsoft",
                epsilon=eps,
            )
            head = "output.weight" if "output.weight" in g.tensors else "token_embd.weight"
            # logits only for the rows asked for (all of them for forward(); the last for sampling)
            y = b.node("Gather", [y, "logit_rows"], ["final_rows"], axis=1)
            self.linear(b, y, [head], "logits")
        finally:
            ext.close()

        kv_shape = [1, Hk, "max_seq", D]
        inputs = [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "S"]),
            helper.make_tensor_value_info("logit_rows", TensorProto.INT64, ["R"]),
            helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
            helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
            helper.make_tensor_value_info("cos_cache", kvt, ["max_seq", D // 2]),
            helper.make_tensor_value_info("sin_cache", kvt, ["max_seq", D // 2]),
        ]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "R", cfg.n_vocab])]
        for i in range(cfg.n_layer):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_{kind}_{i}", kvt, kv_shape))
                outputs.append(helper.make_tensor_value_info(f"present_{kind}_{i}", kvt, kv_shape))
        graph = helper.make_graph(b.nodes, "xsil_llama", inputs, outputs, b.inits)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
            producer_name="xsil",
            producer_version=str(EXPORT_VERSION),
        )
        model.ir_version = 10
        onnx.save(model, os.path.join(out_dir, "model.onnx"))
        counts: Dict[str, int] = {}
        for n in b.nodes:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        return dict(
            nodes=len(b.nodes),
            op_counts=counts,
            weights_bytes=ext.nbytes,
            matmul_weight_bytes=b.matmul_bytes,
            export_version=EXPORT_VERSION,
            kv_dtype=self.opts.kv_dtype,
        )
