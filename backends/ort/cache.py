"""On-disk cache of exported graphs and provider compile artefacts.

Layout: ``<xsil cache dir>/ort/<model sha256[:20]>-<provider>-<options hash>/`` holding
``model.onnx``, ``weights.bin``, provider artefacts (e.g. a QNN EP context model) and
``meta.json``, written last: an entry without ``meta.json`` is incomplete and rebuilt. An entry is
built in a temporary sibling folder and renamed into place, so a crash or a concurrent open never
leaves a half-written entry behind.

The model hash is the SHA-256 of the whole GGUF file. Hashing a multi-GB file takes seconds, so the
digest is remembered per file identity (path, size, mtime, inode): a second open reads it back.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Dict, Optional


def root() -> str:
    from xsil.model.default import cache_dir

    d = os.path.join(cache_dir(), "ort")
    os.makedirs(d, exist_ok=True)
    return d


def model_sha256(path: str) -> str:
    st = os.stat(path)
    ident = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    memo = os.path.join(root(), "hashes", hashlib.sha256(ident.encode()).hexdigest()[:32])
    try:
        with open(memo) as f:
            h = f.read().strip()
        if len(h) == 64:
            return h
    except OSError:
        pass
    d = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 22)
            if not b:
                break
            d.update(b)
    h = d.hexdigest()
    try:
        os.makedirs(os.path.dirname(memo), exist_ok=True)
        tmp = memo + f".{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(h)
        os.replace(tmp, memo)
    except OSError:
        pass
    return h


def options_key(d: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


_CODE_HASH: Dict[str, str] = {}


def code_hash() -> str:
    """Hash of the exporter's own source (and the onnx / onnxruntime versions): a changed exporter
    or toolchain never reuses an entry written by another one, even without a version bump."""
    if "h" not in _CODE_HASH:
        d = hashlib.sha256()
        here = os.path.dirname(os.path.abspath(__file__))
        for f in ("export.py", "weights.py", "static.py"):
            try:
                with open(os.path.join(here, f), "rb") as fh:
                    d.update(fh.read())
            except OSError:
                d.update(f.encode())
        try:
            from importlib.metadata import version

            for pkg in ("onnx", "onnxruntime", "onnxruntime-qnn"):
                try:
                    d.update(f"{pkg}={version(pkg)}".encode())
                except Exception:
                    d.update(f"{pkg}=none".encode())
        except Exception:
            pass
        _CODE_HASH["h"] = d.hexdigest()[:16]
    return _CODE_HASH["h"]


def entry_dir(model_hash: str, provider: str, key: Dict[str, Any]) -> str:
    return os.path.join(root(), f"{model_hash[:20]}-{provider}-{options_key(dict(key, code=code_hash()))}")


def read_meta(d: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(d, "meta.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_meta(d: str, meta: Dict[str, Any]) -> None:
    tmp = os.path.join(d, f"meta.json.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True, default=str)
    os.replace(tmp, os.path.join(d, "meta.json"))


def staging_dir(final: str) -> str:
    os.makedirs(os.path.dirname(final), exist_ok=True)
    return tempfile.mkdtemp(prefix=os.path.basename(final) + ".tmp-", dir=os.path.dirname(final))


def publish(staging: str, final: str) -> str:
    """Move a complete staging folder into place; if another process won the race, keep theirs."""
    if read_meta(final) is None and os.path.isdir(final):
        shutil.rmtree(final, ignore_errors=True)  # incomplete leftover
    try:
        os.rename(staging, final)
        return final
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if read_meta(final) is None:
            raise
        return final
