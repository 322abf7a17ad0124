"""xsil: run 4-bit quantized LLMs on whatever silicon a device has.

The kernel API (quantize, dequantize, matmul, pack, cpu_info) is re-exported here from
:mod:`xsil.kernels`; the KV cache and attention API (KVCache, attention_decode, attention_prefill,
rope) from :mod:`xsil.attention`; :func:`capi_library_path` and :func:`capi_include_dir` locate the
C ABI (:mod:`xsil.capi`). Sessions (:class:`Session`) run GGUF models on a backend chosen by
:func:`backends` / ``backend="auto"``. Importing xsil never imports onnxruntime or any CUDA library.
"""

from __future__ import annotations

from .attention import (
    KV_DTYPES,
    KVCache,
    attention_decode,
    attention_prefill,
    kv_cache_sizes,
    rope,
)
from .capi import capi_include_dir, capi_library_path
from .kernels import (
    FORMATS,
    PackedWeights,
    cpu_info,
    dequantize,
    format_info,
    get_num_threads,
    matmul,
    pack,
    quantize,
    set_isa,
    set_num_threads,
)

from .errors import BackendError, ContextOverflowError, GGUFError, XsilError
from .backend import Session

__version__ = "0.1.0"


def _backends_table(refresh: bool = False) -> list:
    """Every registered backend as data: name, kind, score, available, reason, devices."""
    from . import registry

    return [r.as_dict() for r in registry.table(refresh)]


# ``xsil.backends`` is both the plugin package (xsil.backends.cpu, ...) and, being a callable
# module, the listing function: ``xsil.backends()``.
from . import backends  # noqa: E402


def devices(refresh: bool = False) -> list:
    """Every device an available backend found: backend, name, kind and details."""
    out = []
    for r in _backends_table(refresh):
        for d in r["devices"]:
            out.append(dict(backend=r["name"], **d))
    return out

__all__ = [
    "BackendError",
    "ContextOverflowError",
    "GGUFError",
    "Session",
    "XsilError",
    "backends",
    "devices",
    "KV_DTYPES",
    "KVCache",
    "attention_decode",
    "attention_prefill",
    "kv_cache_sizes",
    "rope",
    "FORMATS",
    "PackedWeights",
    "__version__",
    "capi_include_dir",
    "capi_library_path",
    "cpu_info",
    "dequantize",
    "format_info",
    "get_num_threads",
    "matmul",
    "pack",
    "quantize",
    "set_isa",
    "set_num_threads",
]
