"""`qnn`: Qualcomm HTP (NPU) through the onnxruntime-qnn plugin execution provider."""

from __future__ import annotations

from xsil.backend import Probe

from .base import OrtBackendBase


class QnnBackend(OrtBackendBase):
    name = "qnn"
    kind = "npu"
    provider = "QNNExecutionProvider"

    def _probe(self) -> Probe:
        return Probe(0, "not implemented in this version of xsil")
