"""`qnn`: Qualcomm HTP (NPU) through the onnxruntime-qnn plugin execution provider.

HTP runs static-shape QDQ graphs: the model is exported as fixed chunk graphs (decode 1 token,
prefill N) over a fixed context length, calibrated on a few sequences (activations uint16,
weights int8 per channel by default) and compiled by the QNN EP; the compiled EP context is cached
next to the QDQ graphs, so a second open skips calibration and compilation.

On Linux x86_64 the onnxruntime-qnn wheel runs the HTP backend as a *simulator*: correct, slow,
and reported as such (probe score 1, below `cpu`, so `auto` never picks it).
"""

from __future__ import annotations

import os
import platform
import threading
from typing import Any, Dict, List

from xsil.backend import Device, Probe
from xsil.errors import BackendError

from . import options as O
from .base import OrtBackendBase, find_spec, import_ort, ort_version

EP = "QNNExecutionProvider"
HTP_PERF = (
    "burst",
    "balanced",
    "default",
    "high_performance",
    "high_power_saver",
    "low_balanced",
    "low_power_saver",
    "power_saver",
    "sustained_high_performance",
)

TABLE: Dict[str, O.Opt] = dict(
    O.COMMON,
    prefill_chunk=O.Opt(
        "tokens per run of the fixed-shape prefill graph (default 16)",
        16,
        kind=int,
        check=lambda v: 2 <= v <= 512,
        check_text="an int in [2, 512]",
    ),
    activation_type=O.Opt("QDQ activation type (default 'uint16')", "uint16", choices=("uint16", "uint8")),
    weight_type=O.Opt(
        "QDQ weight type, symmetric per output channel (default 'int8')",
        "int8",
        choices=("int8", "int4", "int16"),
    ),
    calibration_sequences=O.Opt(
        "sequences the activation ranges are calibrated on (default 3)",
        3,
        kind=int,
        check=lambda v: 1 <= v <= 64,
        check_text="an int in [1, 64]",
    ),
    calibration_length=O.Opt(
        "tokens per calibration sequence (default 40, at most n_ctx)",
        40,
        kind=int,
        check=lambda v: 2 <= v <= 4096,
        check_text="an int in [2, 4096]",
    ),
    htp_performance_mode=O.Opt("QNN HTP performance mode (default 'burst')", "burst", choices=HTP_PERF),
)

_reg_lock = threading.Lock()
_registered: Dict[str, str] = {}


def _qnn_module():
    import onnxruntime_qnn

    return onnxruntime_qnn


def qnn_devices(ort) -> List[Any]:
    """Register the onnxruntime-qnn plugin library (once per process) and return its EP devices."""
    with _reg_lock:
        if "lib" not in _registered:
            lib = _qnn_module().get_library_path()
            try:
                ort.register_execution_provider_library(EP, lib)
            except Exception as e:  # already registered (by us or by the application) is fine
                if not any(d.ep_name == EP for d in ort.get_ep_devices()):
                    raise BackendError(f"qnn: registering {lib} failed: {e}") from e
            _registered["lib"] = lib
    return [d for d in ort.get_ep_devices() if d.ep_name == EP]


def is_simulator() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686")


class QnnBackend(OrtBackendBase):
    name = "qnn"
    kind = "npu"
    provider = EP
    table = TABLE

    def _probe(self) -> Probe:
        v = ort_version()
        if v is None or not find_spec("onnxruntime"):
            return Probe(0, "onnxruntime is not installed (pip install 'xsil[qnn]')")
        if not find_spec("onnxruntime_qnn"):
            return Probe(
                0,
                "onnxruntime-qnn is not installed (pip install 'xsil[qnn]'; PyPI wheels exist for "
                "Linux x86_64, where HTP runs as a simulator, and Windows on Arm)",
            )
        if not find_spec("onnx"):
            return Probe(
                0, "onnx is not installed (needed to write the exported graphs; pip install 'xsil[qnn]')"
            )
        oq = _qnn_module()
        htp = oq.get_qnn_htp_path()
        if not os.path.exists(htp):
            return Probe(0, f"onnxruntime-qnn is installed but its HTP backend library {htp} is missing")
        devs = qnn_devices(import_ort())
        if not devs:
            return Probe(0, f"onnxruntime-qnn registered but {EP} reports no device")
        qv = getattr(oq, "__version__", "?")
        if is_simulator():
            dev = Device(
                "HTP (x86_64 simulator)",
                "npu",
                {"backend_path": htp, "onnxruntime_qnn": qv, "simulated": True},
            )
            return Probe(
                1,
                f"onnxruntime-qnn {qv} (onnxruntime {v}): Qualcomm HTP backend running as an x86_64 "
                f"SIMULATOR: correct but slow, for testing; auto never prefers it over cpu",
                [dev],
            )
        dev = Device("Qualcomm HTP", "npu", {"backend_path": htp, "onnxruntime_qnn": qv})
        return Probe(20, f"onnxruntime-qnn {qv} (onnxruntime {v}): Qualcomm HTP", [dev])

    def device_name(self) -> str:
        return "HTP (x86_64 simulator)" if is_simulator() else "Qualcomm HTP"

    def session_class(self):
        from .static import StaticSession

        return StaticSession

    def check_config(self, cfg) -> None:
        pass  # standard ops only: any head_dim

    def export_key(self, opts: Dict[str, Any], cfg, n_ctx: int) -> Dict[str, Any]:
        from .static import STATIC_VERSION

        return dict(
            graph="static-qdq",
            v=STATIC_VERSION,
            n_ctx=n_ctx,
            prefill_chunk=opts["prefill_chunk"],
            activation_type=opts["activation_type"],
            weight_type=opts["weight_type"],
            calibration=(opts["calibration_sequences"], opts["calibration_length"]),
        )

    def export(self, g, cfg, opts: Dict[str, Any], out_dir: str, *, n_ctx: int, tokenizer) -> Dict[str, Any]:
        from .static import calibrate_and_quantize, export_static

        chunks = {"decode": 1}
        if n_ctx > 1:
            chunks["prefill"] = min(opts["prefill_chunk"], n_ctx)
        meta: Dict[str, Any] = dict(chunks=chunks, n_ctx=n_ctx, nodes={}, quantization={})
        for kind, S in chunks.items():
            info = export_static(g, cfg, n_ctx, S, out_dir, f"{kind}.float")
            q = calibrate_and_quantize(
                os.path.join(out_dir, f"{kind}.float.onnx"),
                os.path.join(out_dir, f"{kind}.qdq.onnx"),
                cfg,
                n_ctx,
                S,
                tokenizer,
                n_seq=opts["calibration_sequences"],
                length=opts["calibration_length"],
                activation_type=opts["activation_type"],
                weight_type=opts["weight_type"],
            )
            for f in (f"{kind}.float.onnx", f"{kind}.float.bin"):
                os.remove(os.path.join(out_dir, f))
            meta["nodes"][kind] = info["nodes"]
            meta["quantization"][kind] = q
            meta["matmul_weight_bytes"] = info["matmul_weight_bytes"]
        meta["weights_bytes"] = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
        return meta

    def create_static_session(self, ort, entry: str, kind: str, make_so, opts: Dict[str, Any]):
        """QNN EP session for one chunk graph; the compiled EP context is cached in the entry
        (``<kind>_ctx.onnx`` + its ``_qnn.bin``; ``<kind>_ctx.ok`` is written once both are complete)."""
        devs = qnn_devices(ort)
        popts = {
            "backend_path": _qnn_module().get_qnn_htp_path(),
            "htp_performance_mode": opts["htp_performance_mode"],
        }
        ctx = os.path.join(entry, f"{kind}_ctx.onnx")
        ok = os.path.join(entry, f"{kind}_ctx.ok")
        if os.path.exists(ok) and os.path.exists(ctx):
            so = make_so()
            so.add_provider_for_devices(devs[:1], popts)
            try:
                return ort.InferenceSession(ctx, so), {"ep_context_hit": True}
            except Exception:
                os.remove(ok)  # a stale or broken context: compile again
        for f in (ctx, ctx[:-5] + "_qnn.bin"):
            if os.path.exists(f):
                os.remove(f)
        so = make_so()
        so.add_provider_for_devices(devs[:1], popts)
        so.add_session_config_entry("ep.context_enable", "1")
        so.add_session_config_entry("ep.context_file_path", ctx)
        so.add_session_config_entry("ep.context_embed_mode", "0")
        sess = ort.InferenceSession(os.path.join(entry, f"{kind}.qdq.onnx"), so)
        if os.path.exists(ctx):
            with open(ok, "w") as f:
                f.write("ok\n")
        return sess, {"ep_context_hit": False}
