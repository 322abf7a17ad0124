"""Backend registry: built-ins as lazy import strings, third parties through the entry-point group
``xsil.backends``. A plugin that fails to import is listed as unavailable with its error; it never
breaks ``import xsil``. Nothing here imports onnxruntime or CUDA until a backend is probed."""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .backend import Backend, Probe

ENTRY_POINT_GROUP = "xsil.backends"

# name -> "module:attribute". Kind is what the backend drives, for the device table.
BUILTINS: Dict[str, str] = {
    "cpu": "xsil.backends.cpu:CpuBackend",
    "ort-cpu": "xsil.backends.ort:OrtCpuBackend",
    "qnn": "xsil.backends.ort:QnnBackend",
    "coreml": "xsil.backends.ort:CoreMLBackend",
    "cuda": "xsil.backends.cuda:CudaBackend",
}
KINDS: Dict[str, str] = {"cpu": "cpu", "ort-cpu": "cpu", "qnn": "npu", "coreml": "npu", "cuda": "gpu"}


@dataclass
class BackendInfo:
    """A row of the backend table (``xsil.backends()``)."""

    name: str
    kind: str
    score: int
    available: bool
    reason: str
    devices: List[Dict[str, Any]] = field(default_factory=list)
    source: str = ""      # import string or entry point

    def as_dict(self) -> Dict[str, Any]:
        return dict(name=self.name, kind=self.kind, score=self.score, available=self.available, reason=self.reason,
                    devices=self.devices, source=self.source)


_lock = threading.Lock()
_instances: Dict[str, Backend] = {}
_errors: Dict[str, str] = {}
_probes: Dict[str, Probe] = {}


def _sources() -> Dict[str, str]:
    src = dict(BUILTINS)
    try:
        from importlib.metadata import entry_points

        eps = entry_points()
        group = eps.select(group=ENTRY_POINT_GROUP) if hasattr(eps, "select") else eps.get(ENTRY_POINT_GROUP, [])
        for ep in group:
            src.setdefault(ep.name, ep.value)
    except Exception:  # a broken environment must not break xsil
        pass
    return src


def names() -> List[str]:
    """Every registered backend name (built-ins first)."""
    return list(_sources())


def get(name: str) -> Optional[Backend]:
    """The backend object, importing its module on first use; None if it failed to import (see
    :func:`import_error`)."""
    with _lock:
        if name in _instances:
            return _instances[name]
        if name in _errors:
            return None
        src = _sources().get(name)
        if src is None:
            raise ValueError(f"[backend] unknown backend {name!r}; registered: {', '.join(names())}")
        mod_name, _, attr = src.partition(":")
        try:
            obj = getattr(importlib.import_module(mod_name), attr)
            inst = obj() if isinstance(obj, type) else obj
            _instances[name] = inst
            return inst
        except Exception as e:  # plugin import failure is data, not a crash
            _errors[name] = f"plugin {src} failed to import: {type(e).__name__}: {e}"
            return None


def import_error(name: str) -> Optional[str]:
    return _errors.get(name)


def probe(name: str, refresh: bool = False) -> Probe:
    """Probe a backend (cached); never raises."""
    if not refresh and name in _probes:
        return _probes[name]
    b = get(name)
    if b is None:
        p = Probe(0, import_error(name) or "not importable")
    else:
        try:
            p = b.probe()
        except Exception as e:  # probe() must not raise; if it does, report it
            p = Probe(0, f"probe raised {type(e).__name__}: {e}")
    _probes[name] = p
    return p


def table(refresh: bool = False) -> List[BackendInfo]:
    rows = []
    src = _sources()
    for n in src:
        p = probe(n, refresh)
        rows.append(BackendInfo(n, KINDS.get(n, getattr(get(n), "kind", "?") if get(n) else "?"), p.score,
                                p.available, p.reason,
                                [dict(name=d.name, kind=d.kind, **d.detail) for d in p.devices], src[n]))
    return rows
