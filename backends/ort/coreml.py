"""`coreml`: Apple Core ML (Neural Engine / GPU / CPU) through ONNX Runtime's CoreML execution
provider, which only the macOS (and iOS) builds of onnxruntime contain.

Core ML wants static shapes: the same fixed-context chunk graphs as `qnn` (decode 1 token,
prefill N), in float (Core ML picks its own precision per compute unit), RMSNorm decomposed into
standard ops. Core ML's compiled models are cached in the xsil cache entry (ModelCacheDirectory).

Verified: the graph and the chunked session, on ORT's CPU provider (tests/backends/test_coreml.py).
Not verified: the CoreML EP itself (no macOS machine was available).
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any, Dict

from xsil.backend import Device, Probe

from . import options as O
from .base import OrtBackendBase, find_spec, import_ort, ort_version

EP = "CoreMLExecutionProvider"

TABLE: Dict[str, O.Opt] = dict(
    O.COMMON,
    prefill_chunk=O.Opt(
        "tokens per run of the fixed-shape prefill graph (default 32)",
        32,
        kind=int,
        check=lambda v: 2 <= v <= 512,
        check_text="an int in [2, 512]",
    ),
    compute_units=O.Opt(
        "Core ML compute units (default 'ALL')",
        "ALL",
        choices=("ALL", "CPUAndNeuralEngine", "CPUAndGPU", "CPUOnly"),
    ),
    model_format=O.Opt(
        "Core ML model format (default 'MLProgram')", "MLProgram", choices=("MLProgram", "NeuralNetwork")
    ),
)


class CoreMLBackend(OrtBackendBase):
    name = "coreml"
    kind = "npu"
    provider = EP
    table = TABLE

    def _probe(self) -> Probe:
        v = ort_version()
        if sys.platform != "darwin":
            return Probe(
                0,
                f"Core ML is Apple-only: ONNX Runtime ships its {EP} only in macOS/iOS builds; this is "
                f"{platform.system()} {platform.machine()}"
                + (f" with onnxruntime {v}" if v else " without onnxruntime"),
            )
        if v is None or not find_spec("onnxruntime") or not find_spec("onnx"):
            return Probe(0, "onnxruntime / onnx are not installed (pip install 'xsil[coreml]')")
        ort = import_ort()
        if EP not in ort.get_available_providers():
            return Probe(0, f"this onnxruntime {v} build has no {EP}")
        # below cpu until verified on Apple hardware: auto keeps cpu; ask for coreml by name
        return Probe(
            5,
            f"onnxruntime {v}, {EP} (not yet verified by xsil on Apple hardware)",
            [Device(f"Apple {platform.machine()} (Core ML)", "npu", {"provider": EP})],
        )

    def device_name(self) -> str:
        return f"Apple {platform.machine()} (Core ML)"

    def session_class(self):
        from .static import StaticSession

        return StaticSession

    def check_config(self, cfg) -> None:
        pass

    def export_key(self, opts: Dict[str, Any], cfg, n_ctx: int) -> Dict[str, Any]:
        from .static import STATIC_VERSION

        return dict(graph="static-float", v=STATIC_VERSION, n_ctx=n_ctx, prefill_chunk=opts["prefill_chunk"])

    def export(self, g, cfg, opts: Dict[str, Any], out_dir: str, *, n_ctx: int, tokenizer) -> Dict[str, Any]:
        from .static import export_static

        chunks = {"decode": 1}
        if n_ctx > 1:
            chunks["prefill"] = min(opts["prefill_chunk"], n_ctx)
        meta: Dict[str, Any] = dict(chunks=chunks, n_ctx=n_ctx, nodes={}, quantization=None)
        for kind, S in chunks.items():
            info = export_static(g, cfg, n_ctx, S, out_dir, kind, rmsnorm="decomposed")
            meta["nodes"][kind] = info["nodes"]
            meta["matmul_weight_bytes"] = info["matmul_weight_bytes"] * 4  # fp32 weights
        meta["weights_bytes"] = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
        return meta

    def provider_options(self, entry: str, opts: Dict[str, Any]) -> Dict[str, str]:
        cache = os.path.join(entry, "coreml")
        os.makedirs(cache, exist_ok=True)
        return {
            "ModelFormat": opts["model_format"],
            "MLComputeUnits": opts["compute_units"],
            "RequireStaticInputShapes": "1",
            "ModelCacheDirectory": cache,
        }

    def create_static_session(self, ort, entry: str, kind: str, make_so, opts: Dict[str, Any]):
        so = make_so()
        providers = (
            [(self.provider, self.provider_options(entry, opts))] if self.provider == EP else [self.provider]
        )
        return ort.InferenceSession(os.path.join(entry, f"{kind}.onnx"), so, providers=providers), {}
