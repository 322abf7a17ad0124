"""`ort-cpu`: ONNX Runtime's CPU execution provider on the exported graph (MatMulNBits with
int8 activations, GroupQueryAttention with an in-place KV cache)."""

from __future__ import annotations

from typing import Any, Dict

from xsil.backend import Device, Probe

from . import options as O
from .base import OrtBackendBase, find_spec, ort_version

TABLE: Dict[str, O.Opt] = dict(
    O.COMMON,
    accuracy_level=O.Opt(
        "MatMulNBits accuracy_level: 4 (default) quantizes activations to int8 per 32-block like "
        "llama.cpp; 0 or 1 keeps them fp32",
        4,
        choices=(0, 1, 2, 3, 4),
    ),
    fuse_qkv=O.Opt(
        "one MatMulNBits for Q, K and V (packed QKV into GroupQueryAttention; default True)", True, kind=bool
    ),
    allow_spinning=O.Opt(
        "let ORT's intra-op threads spin between ops (lower latency, busier cores; default True)",
        True,
        kind=bool,
    ),
)


class OrtCpuBackend(OrtBackendBase):
    name = "ort-cpu"
    kind = "cpu"
    provider = "CPUExecutionProvider"
    table = TABLE

    def _probe(self) -> Probe:
        v = ort_version()
        if v is None or not find_spec("onnxruntime"):
            return Probe(0, "onnxruntime is not installed (pip install 'xsil[ort]')")
        if not find_spec("onnx"):
            return Probe(
                0, "onnx is not installed (needed to write the exported graph; pip install 'xsil[ort]')"
            )
        from .base import import_ort

        ort = import_ort()
        if self.provider not in ort.get_available_providers():
            return Probe(0, f"onnxruntime {v} has no {self.provider}")
        from xsil.backends.cpu import _cpu_name

        # below `cpu` (10): xsil's own kernels are the default on a CPU; ort-cpu is chosen by name
        return Probe(
            5,
            f"onnxruntime {v}, {self.provider}",
            [Device(_cpu_name(), "cpu", {"provider": self.provider, "onnxruntime": v})],
        )

    def device_name(self) -> str:
        from xsil.backends.cpu import _cpu_name

        return _cpu_name()   # describe()["isa"] names the ORT version and provider

    def export_key(self, opts: Dict[str, Any], cfg, n_ctx: int) -> Dict[str, Any]:
        # the dynamic graph does not depend on n_ctx: one export serves every context length
        from .export import ExportOptions

        eo = ExportOptions(opts["accuracy_level"], opts["fuse_qkv"], opts["kv_dtype"])
        return dict(graph="dynamic-gqa", **eo.key())

    def export(self, g, cfg, opts: Dict[str, Any], out_dir: str, **_: Any) -> Dict[str, Any]:
        from .export import ExportOptions, LlamaExporter

        return LlamaExporter(
            g, cfg, ExportOptions(opts["accuracy_level"], opts["fuse_qkv"], opts["kv_dtype"])
        ).export(out_dir)

    def session_options(self, ort, opts, threads, strict):
        so = super().session_options(ort, opts, threads, strict)
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if opts["allow_spinning"] else "0")
        return so
