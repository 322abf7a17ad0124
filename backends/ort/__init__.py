"""ONNX Runtime backends: ``ort-cpu``, ``qnn`` and ``coreml``.

One shared base (:mod:`.base`: export + cache + ORT session + KV binding + placement report) and
one small module per provider with its option table. Importing this package does not import
onnxruntime; the backends import it lazily in ``probe()`` / ``open()``.
"""

from .coreml import CoreMLBackend
from .cpu import OrtCpuBackend
from .qnn import QnnBackend

__all__ = ["CoreMLBackend", "OrtCpuBackend", "QnnBackend"]
