"""A small GGUF v3 writer (metadata + tensors), enough to produce xsil's synthetic models without
gguf-py. Tensors are written in GGUF layout with the default 32-byte alignment."""

from __future__ import annotations

import struct
from typing import Any, BinaryIO, Dict, List, Tuple

import numpy as np

from .gguf import (DEFAULT_ALIGNMENT, GGML_TYPES, T_ARRAY, T_BOOL, T_FLOAT32, T_INT32, T_STRING, T_UINT32, T_UINT64)

_TYPE_ID = {v[0]: k for k, v in GGML_TYPES.items()}


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _value(v: Any) -> Tuple[int, bytes]:
    if isinstance(v, bool):
        return T_BOOL, struct.pack("<?", v)
    if isinstance(v, int):
        return (T_UINT32, struct.pack("<I", v)) if 0 <= v < 1 << 32 else (T_UINT64, struct.pack("<Q", v))
    if isinstance(v, float):
        return T_FLOAT32, struct.pack("<f", v)
    if isinstance(v, str):
        return T_STRING, _str(v)
    if isinstance(v, (list, tuple, np.ndarray)):
        items = list(v)
        if all(isinstance(x, str) for x in items):
            return T_ARRAY, struct.pack("<IQ", T_STRING, len(items)) + b"".join(_str(x) for x in items)
        arr = np.asarray(items)
        if arr.dtype.kind == "f":
            return T_ARRAY, struct.pack("<IQ", T_FLOAT32, len(items)) + arr.astype("<f4").tobytes()
        if arr.dtype.kind in "iu":
            return T_ARRAY, struct.pack("<IQ", T_INT32, len(items)) + arr.astype("<i4").tobytes()
    raise TypeError(f"cannot write metadata value {v!r}")


class GGUFWriter:
    def __init__(self) -> None:
        self.kv: Dict[str, Any] = {}
        self.tensors: List[Tuple[str, Tuple[int, ...], str, bytes]] = []

    def add(self, key: str, value: Any) -> None:
        self.kv[key] = value

    def add_tensor(self, name: str, data: np.ndarray, type_name: str, shape: Tuple[int, ...]) -> None:
        """shape is the NumPy shape of the logical tensor; data holds its bytes in GGUF layout
        (float32/float16 values, or uint8 block rows)."""
        self.tensors.append((name, tuple(int(d) for d in shape), type_name, np.ascontiguousarray(data).tobytes()))

    def write(self, f: BinaryIO) -> None:
        out = bytearray()
        out += b"GGUF" + struct.pack("<IQQ", 3, len(self.tensors), len(self.kv))
        for k, v in self.kv.items():
            t, b = _value(v)
            out += _str(k) + struct.pack("<I", t) + b
        offset = 0
        for name, shape, tname, data in self.tensors:
            dims = tuple(reversed(shape))
            out += _str(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
            out += struct.pack("<IQ", _TYPE_ID[tname], offset)
            offset += (len(data) + DEFAULT_ALIGNMENT - 1) // DEFAULT_ALIGNMENT * DEFAULT_ALIGNMENT
        pad = (-len(out)) % DEFAULT_ALIGNMENT
        out += b"\0" * pad
        f.write(out)
        for _, _, _, data in self.tensors:
            f.write(data)
            f.write(b"\0" * ((-len(data)) % DEFAULT_ALIGNMENT))
