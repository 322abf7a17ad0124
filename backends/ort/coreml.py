"""`coreml`: Apple Core ML through ONNX Runtime's CoreML execution provider (macOS builds only)."""

from __future__ import annotations

from xsil.backend import Probe

from .base import OrtBackendBase


class CoreMLBackend(OrtBackendBase):
    name = "coreml"
    kind = "npu"
    provider = "CoreMLExecutionProvider"

    def _probe(self) -> Probe:
        return Probe(0, "not implemented in this version of xsil")
