"""`cuda`: NOT IMPLEMENTED YET. Registered so listings show it with an honest reason; the CUDA
kernels and the xsil._cuda extension are the subject of the CUDA backend issue."""

from __future__ import annotations

from typing import Any, Dict

from xsil.backend import API_VERSION, ModelSpec, Probe, Support
from xsil.errors import BackendError

_REASON = "not implemented in this version of xsil (CUDA backend is planned)"


class CudaBackend:
    name = "cuda"
    api_version = API_VERSION
    kind = "gpu"

    def probe(self) -> Probe:
        return Probe(0, _REASON)

    def supports(self, spec: ModelSpec) -> Support:
        return Support(False, _REASON)

    def options(self) -> Dict[str, str]:
        return {}

    def open(self, model: str, **options: Any):
        raise BackendError(f"cuda: {_REASON}")
