"""ONNX Runtime backends (`ort-cpu`, `qnn`, `coreml`).

NOT IMPLEMENTED YET: these are registered so that device listings and `auto` selection show them
with an honest reason; opening one raises. The ONNX export, provider options tables and the
QNN/CoreML specifics are the subject of the ONNX Runtime backends issue.
"""

from __future__ import annotations

from typing import Any, Dict

from xsil.backend import API_VERSION, ModelSpec, Probe, Support
from xsil.errors import BackendError

_REASON = "not implemented in this version of xsil (ONNX Runtime backends are planned)"


class _OrtNotYet:
    api_version = API_VERSION
    kind = "cpu"

    def probe(self) -> Probe:
        return Probe(0, _REASON)

    def supports(self, spec: ModelSpec) -> Support:
        return Support(False, _REASON)

    def options(self) -> Dict[str, str]:
        return {}

    def open(self, model: str, **options: Any):
        raise BackendError(f"{self.name}: {_REASON}")


class OrtCpuBackend(_OrtNotYet):
    name = "ort-cpu"


class QnnBackend(_OrtNotYet):
    name = "qnn"
    kind = "npu"


class CoreMLBackend(_OrtNotYet):
    name = "coreml"
    kind = "npu"
