"""GGUF v2/v3 reader: header, metadata, tensor infos, data section, memory-mapped and validated.

Every field is checked before use: magic, version, counts, string and array lengths, tensor dims
and element counts, types, offsets, sizes within the file, and alignment. A bad file raises
:class:`xsil.GGUFError` naming the field and its byte offset; nothing is allocated in proportion to
a count before that count has been checked against the bytes actually present.

Tensor data are zero-copy NumPy views of the read-only mapping.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..errors import GGUFError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_STRING = 1 << 30          # no key/value string is anywhere near 1 GiB in a real file
MAX_ARRAY_NESTING = 4

# GGUF metadata value types
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY, T_UINT64, T_INT64, \
    T_FLOAT64 = range(13)
_SCALAR = {
    T_UINT8: ("<B", 1, np.uint8), T_INT8: ("<b", 1, np.int8), T_UINT16: ("<H", 2, np.uint16),
    T_INT16: ("<h", 2, np.int16), T_UINT32: ("<I", 4, np.uint32), T_INT32: ("<i", 4, np.int32),
    T_FLOAT32: ("<f", 4, np.float32), T_BOOL: ("<?", 1, np.bool_), T_UINT64: ("<Q", 8, np.uint64),
    T_INT64: ("<q", 8, np.int64), T_FLOAT64: ("<d", 8, np.float64),
}
VALUE_TYPE_NAMES = {
    T_UINT8: "uint8", T_INT8: "int8", T_UINT16: "uint16", T_INT16: "int16", T_UINT32: "uint32", T_INT32: "int32",
    T_FLOAT32: "float32", T_BOOL: "bool", T_STRING: "string", T_ARRAY: "array", T_UINT64: "uint64",
    T_INT64: "int64", T_FLOAT64: "float64",
}

# ggml tensor types: id -> (name, elements per block, bytes per block)
GGML_TYPES: Dict[int, Tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: Tuple[int, ...]       # GGUF order: dims[0] is the innermost (contiguous) dimension
    type_id: int
    type_name: str
    offset: int                 # absolute byte offset in the file
    nbytes: int
    info_offset: int            # where this tensor's info record starts (for error messages)

    @property
    def shape(self) -> Tuple[int, ...]:
        """NumPy (row-major) shape: reversed GGUF dims."""
        return tuple(reversed(self.dims))

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n


class _Cursor:
    """Bounds-checked little-endian reader over a buffer."""

    def __init__(self, buf, size: int):
        self.buf = buf
        self.size = size
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(f"truncated file: {what} at offset {self.pos} needs {n} bytes but only "
                            f"{max(self.size - self.pos, 0)} remain (file size {self.size})")

    def scalar(self, vtype: int, what: str):
        fmt, n, _ = _SCALAR[vtype]
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return self.scalar(T_UINT32, what)

    def u64(self, what: str) -> int:
        return self.scalar(T_UINT64, what)

    def string(self, what: str) -> str:
        at = self.pos
        n = self.u64(f"{what} length")
        if n > MAX_STRING:
            raise GGUFError(f"{what} at offset {at}: string length {n} is absurd")
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALAR:
            return self.scalar(vtype, what)
        if vtype == T_STRING:
            return self.string(what)
        if vtype == T_ARRAY:
            at = self.pos
            if depth >= MAX_ARRAY_NESTING:
                raise GGUFError(f"{what} at offset {at}: arrays nested deeper than {MAX_ARRAY_NESTING}")
            etype = self.u32(f"{what} element type")
            if etype not in VALUE_TYPE_NAMES:
                raise GGUFError(f"{what} at offset {at}: unknown array element type {etype}")
            count = self.u64(f"{what} element count")
            if etype in _SCALAR:
                fmt, sz, dt = _SCALAR[etype]
                if count > (self.size - self.pos) // sz:
                    raise GGUFError(f"{what} at offset {at}: array of {count} {VALUE_TYPE_NAMES[etype]} needs "
                                    f"{count * sz} bytes but only {self.size - self.pos} remain")
                arr = np.frombuffer(self.buf, dtype=np.dtype(dt).newbyteorder("<"), count=count, offset=self.pos)
                self.pos += count * sz
                return arr
            # strings / nested arrays: each element takes >= 8 bytes, so bound the count first
            if count > (self.size - self.pos) // 8:
                raise GGUFError(f"{what} at offset {at}: array count {count} exceeds what the file can hold")
            return [self.value(etype, f"{what}[{i}]", depth + 1) for i in range(count)]
        raise GGUFError(f"{what} at offset {self.pos}: unknown value type {vtype}")


class GGUFFile:
    """A validated, memory-mapped GGUF file.

    ``metadata`` maps keys to Python values (arrays of numbers as read-only NumPy arrays);
    ``tensors`` maps names to :class:`TensorInfo`; :meth:`tensor` returns zero-copy views.
    """

    def __init__(self, path: str | os.PathLike, copy_on_write: bool = False):
        """copy_on_write=True maps the file privately and writably (MAP_PRIVATE): tensors can then be
        repacked in place; touched pages become private copies and the file is never modified."""
        self.path = os.fspath(path)
        try:
            self._fh = open(self.path, "rb")
        except OSError as e:
            raise GGUFError(f"cannot open GGUF file {self.path!r}: {e.strerror}") from None
        try:
            size = os.fstat(self._fh.fileno()).st_size
            if size < 24:
                raise GGUFError(f"{self.path!r} is {size} bytes: too small for a GGUF header (24 bytes)")
            self._mm = mmap.mmap(self._fh.fileno(), 0,
                                 access=mmap.ACCESS_COPY if copy_on_write else mmap.ACCESS_READ)
            self.copy_on_write = copy_on_write
            self.size = size
            self._parse()
        except GGUFError as e:
            self.close()
            raise GGUFError(f"{os.path.basename(self.path)}: {e}") from None
        except BaseException:
            self.close()
            raise

    # -- parsing ---------------------------------------------------------------------------------
    def _parse(self) -> None:
        c = _Cursor(self._mm, self.size)
        magic = bytes(self._mm[0:4])
        if magic != GGUF_MAGIC:
            raise GGUFError(f"bad magic {magic!r} at offset 0 (expected b'GGUF'): not a GGUF file")
        c.pos = 4
        self.version = c.u32("version")
        if self.version not in (2, 3):
            raise GGUFError(f"unsupported GGUF version {self.version} at offset 4 (supported: 2, 3)")
        n_tensors = c.u64("tensor_count")
        n_kv = c.u64("metadata_kv_count")
        # each KV needs >= 8 (key len) + 4 (type) + 1 bytes; each tensor info >= 8 + 4 + 8 + 4 + 8
        if n_kv > self.size // 13:
            raise GGUFError(f"metadata_kv_count {n_kv} at offset 16 is larger than the file could hold")
        if n_tensors > self.size // 32:
            raise GGUFError(f"tensor_count {n_tensors} at offset 8 is larger than the file could hold")

        self.metadata: Dict[str, Any] = {}
        self.metadata_types: Dict[str, int] = {}
        for i in range(n_kv):
            at = c.pos
            key = c.string(f"metadata key #{i}")
            if key in self.metadata:
                raise GGUFError(f"duplicate metadata key {key!r} at offset {at}")
            vtype = c.u32(f"type of {key!r}")
            if vtype not in VALUE_TYPE_NAMES:
                raise GGUFError(f"metadata {key!r} at offset {at}: unknown value type {vtype}")
            self.metadata[key] = c.value(vtype, f"metadata {key!r}")
            self.metadata_types[key] = vtype

        align = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(align, (int, np.integer)) or isinstance(align, bool) or align <= 0 or align & (align - 1) \
                or align > 1 << 20:
            raise GGUFError(f"general.alignment {align!r} must be a power of two")
        self.alignment = int(align)

        infos = []
        names = set()
        for i in range(n_tensors):
            at = c.pos
            name = c.string(f"tensor #{i} name")
            if name in names:
                raise GGUFError(f"duplicate tensor name {name!r} at offset {at}")
            names.add(name)
            n_dims = c.u32(f"tensor {name!r} n_dims")
            if not 1 <= n_dims <= MAX_DIMS:
                raise GGUFError(f"tensor {name!r} at offset {at}: n_dims {n_dims} not in [1, {MAX_DIMS}]")
            dims = tuple(c.u64(f"tensor {name!r} dim {d}") for d in range(n_dims))
            for d in dims:
                if d == 0 or d >= 1 << 40:
                    raise GGUFError(f"tensor {name!r} at offset {at}: dimension {d} out of range")
            n_el = 1
            for d in dims:
                n_el *= d
            if n_el >= 1 << 48:
                raise GGUFError(f"tensor {name!r} at offset {at}: {n_el} elements overflows any real model")
            type_id = c.u32(f"tensor {name!r} type")
            if type_id not in GGML_TYPES:
                raise GGUFError(f"tensor {name!r} at offset {at}: unknown ggml type id {type_id}")
            tname, bs, ts = GGML_TYPES[type_id]
            if dims[0] % bs != 0:
                raise GGUFError(f"tensor {name!r} at offset {at}: row length {dims[0]} is not a multiple of the "
                                f"{tname} block size {bs}")
            rel = c.u64(f"tensor {name!r} offset")
            if rel % self.alignment != 0:
                raise GGUFError(f"tensor {name!r} at offset {at}: data offset {rel} is not aligned to "
                                f"{self.alignment}")
            infos.append((name, dims, type_id, tname, rel, n_el // bs * ts, at))

        self.data_offset = (c.pos + self.alignment - 1) // self.alignment * self.alignment
        self.tensors: Dict[str, TensorInfo] = {}
        spans = []
        for name, dims, type_id, tname, rel, nbytes, at in infos:
            start = self.data_offset + rel
            if start + nbytes > self.size:
                raise GGUFError(f"tensor {name!r} (info at offset {at}): data [{start}, {start + nbytes}) lies "
                                f"beyond the end of the file ({self.size} bytes); the file is truncated or "
                                f"the offset is wrong")
            self.tensors[name] = TensorInfo(name, dims, type_id, tname, start, nbytes, at)
            spans.append((start, start + nbytes, name))
        spans.sort()
        for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise GGUFError(f"tensors {n0!r} and {n1!r} overlap in the data section (offset {s1})")

    # -- access ----------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str, kinds: tuple = (int,)) -> Any:
        if key not in self.metadata:
            raise GGUFError(f"{os.path.basename(self.path)}: required metadata key {key!r} is missing")
        v = self.metadata[key]
        if isinstance(v, np.generic):
            v = v.item()
        if not isinstance(v, kinds) or isinstance(v, bool) and bool not in kinds:
            raise GGUFError(f"{os.path.basename(self.path)}: metadata {key!r} has type "
                            f"{VALUE_TYPE_NAMES.get(self.metadata_types.get(key), '?')}, expected "
                            f"{'/'.join(k.__name__ for k in kinds)}")
        return v

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view of the mapping (no copy)."""
        t = self.tensor_info(name)
        return np.frombuffer(self._mm, dtype=np.uint8, count=t.nbytes, offset=t.offset)

    def tensor_info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{os.path.basename(self.path)}: tensor {name!r} is missing") from None

    def tensor(self, name: str) -> np.ndarray:
        """Zero-copy view: F32/F16 as float arrays in NumPy shape; block formats as uint8
        ``[rows, row_bytes]`` (GGUF row layout)."""
        t = self.tensor_info(name)
        b = self.raw(name)
        rows = t.n_elements // t.dims[0]
        if t.type_name == "F32":
            return b.view(np.float32).reshape(t.shape)
        if t.type_name == "F16":
            return b.view(np.float16).reshape(t.shape)
        return b.reshape(rows, t.nbytes // rows)

    def release(self, name: str) -> None:
        """Drop the whole pages of a tensor's data from this process's mapping (MADV_DONTNEED): after
        its bytes were copied elsewhere (packed), they no longer count in RSS. Reading the tensor
        again simply faults the pages back in from the file."""
        t = self.tensor_info(name)
        page = mmap.PAGESIZE
        start = (t.offset + page - 1) // page * page
        end = (t.offset + t.nbytes) // page * page
        if end > start and hasattr(mmap, "MADV_DONTNEED"):
            try:
                self._mm.madvise(mmap.MADV_DONTNEED, start, end - start)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        mm = getattr(self, "_mm", None)
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # views still alive: the mapping closes when they go
            self._mm = None
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()
            self._fh = None

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"GGUFFile({self.path!r}, v{self.version}, {len(self.tensors)} tensors, "
                f"{len(self.metadata)} metadata keys)")
