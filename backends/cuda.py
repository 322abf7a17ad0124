"""`cuda`: xsil's own CUDA kernels on an NVIDIA GPU (the ``xsil._cuda`` extension).

``import xsil`` never loads CUDA: only :meth:`CudaBackend.probe` and :meth:`CudaBackend.open` import
``xsil._cuda``, lazily. The extension links the CUDA runtime statically, so it imports on a machine
without a driver, and probe() then reports why no GPU is usable ("no CUDA driver", "no device").

The model (Llama family; Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / Q4_K / Q5_K / Q6_K matrices, mixed freely
as in llama.cpp's Q4_K_M / Q5_K_M files; F16 / F32 also accepted) is uploaded once to device
memory (plain cudaMalloc) and the whole forward runs in C++ on the device (``CudaLlama``). The KV
cache is the paged device cache (``xsil._cuda.KVCache``: the CPU cache's page bookkeeping, rows
f16 or q8_0 in device memory); a session is one sequence in it, n_ctx tokens, no context shift.
"""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Any

import numpy as np

from xsil.backend import API_VERSION, Device, ModelSpec, Probe, Session, Support, model_support
from xsil.errors import BackendError, ContextOverflowError, GGUFError

SUPPORTED_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")

_OPTIONS = {
    "device": "CUDA device index (default 0)",
    "cuda_graphs": "decode replays one captured CUDA graph of the whole forward (default True)",
    "page_size": "KV cache page size in tokens (default 16)",
    "kv_budget_tokens": "KV pool size in tokens (default n_ctx)",
}

KV_DTYPES = ("f16", "q8_0")


_ext_override: dict[str, Any] = {}


def _load_ext():
    """xsil._cuda, or (None, reason).

    ``XSIL_CUDA_EXT=<path>`` loads another build of the extension instead (a testing hook: the test
    suite points it at ``tests/cuda_emu``'s CPU-emulated build when no GPU is present)."""
    path = os.environ.get("XSIL_CUDA_EXT")
    if path:
        if path not in _ext_override:
            try:
                name = os.path.basename(path).split(".")[0]  # _cuda, or _cuda_emu for the emulator
                spec = importlib.util.spec_from_file_location(f"xsil.{name}", path)
                if spec is None or spec.loader is None:
                    raise ImportError(f"not an extension module: {path}")
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
                _ext_override[path] = (mod, "")
            except Exception as e:  # noqa: BLE001 - reported through the probe
                _ext_override[path] = (None, f"XSIL_CUDA_EXT={path} could not be loaded: {e}")
        return _ext_override[path]
    try:
        from xsil import _cuda

        return _cuda, ""
    except ImportError as e:
        return None, f"xsil._cuda not built (this build found no CUDA compiler, or XSIL_CUDA=off): {e}"


def is_emulator(info: dict[str, Any]) -> bool:
    """True when the loaded extension is the CPU emulator build (tests/cuda_emu), not a GPU."""
    return any("emulator" in d.get("name", "") for d in info.get("devices", []))


def device_info() -> dict[str, Any]:
    """The extension's device query, or ok=False with the reason (never raises)."""
    ext, why = _load_ext()
    if ext is None:
        return dict(ok=False, reason=why, devices=[], driver_version=0, runtime_version=0)
    try:
        return dict(ext.device_info())
    except Exception as e:  # the query itself never raises; be safe anyway
        return dict(
            ok=False, reason=f"CUDA device query failed: {e}", devices=[], driver_version=0, runtime_version=0
        )


class CudaBackend:
    name = "cuda"
    api_version = API_VERSION
    kind = "gpu"

    def probe(self) -> Probe:
        info = device_info()
        if not info["ok"]:
            return Probe(0, info["reason"])
        devs = []
        for d in info["devices"]:
            cc = d["compute_capability"]
            devs.append(
                Device(
                    d["name"],
                    "gpu",
                    {
                        "index": d["index"],
                        "memory": d["total_memory"],
                        "compute_capability": f"{cc[0]}.{cc[1]}",
                        "sm_count": d["sm_count"],
                        "driver_version": info["driver_version"],
                        "runtime_version": info["runtime_version"],
                    },
                )
            )
        if not devs:
            return Probe(0, "no device")
        # __dp4a (the integer dot of the quantized kernels) needs compute capability >= 6.1; the
        # build carries SASS for sm_80..sm_90 and compute_90 PTX.
        best = devs[0]
        cc = tuple(int(x) for x in best.detail["compute_capability"].split("."))
        if cc < (8, 0):
            return Probe(
                0,
                f"{best.name} has compute capability {cc[0]}.{cc[1]}; xsil's CUDA build targets >= 8.0",
                devs,
            )
        mem = best.detail["memory"] / 2**30
        if is_emulator(info):
            # usable (so tests and conformance run), never preferred over a real backend by auto
            return Probe(1, f"{best.name}: xsil's CUDA code on the CPU for testing, very slow", devs)
        return Probe(
            20, f"{len(devs)} CUDA device(s); using {best.name} ({mem:.0f} GiB, sm_{cc[0]}{cc[1]})", devs
        )

    def supports(self, spec: ModelSpec) -> Support:
        return model_support(spec, SUPPORTED_TYPES, "cuda")

    def options(self) -> dict[str, str]:
        return dict(_OPTIONS)

    def open(
        self,
        model: str,
        *,
        n_ctx: int = 4096,
        kv_dtype: str = "f16",
        threads=None,
        strict: bool = False,
        **options: Any,
    ) -> CudaSession:
        # strict: every op runs on the device; there is nothing to fall back from.
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(
                f"[cuda] unknown option(s) {', '.join(unknown)}; valid options: {', '.join(_OPTIONS)}"
            )
        dev = options.get("device", 0)
        if isinstance(dev, bool) or not isinstance(dev, (int, np.integer)) or dev < 0:
            raise ValueError(f"[cuda] device={dev!r} must be an int >= 0")
        graphs = options.get("cuda_graphs", True)
        if not isinstance(graphs, bool):
            raise ValueError(f"[cuda] cuda_graphs={graphs!r} must be True or False")
        if kv_dtype not in KV_DTYPES:
            raise ValueError(f"[cuda] kv_dtype={kv_dtype!r} is not supported; valid: 'f16', 'q8_0'")
        page_size = options.get("page_size", 16)
        if isinstance(page_size, bool) or not isinstance(page_size, (int, np.integer)) or not 1 <= page_size <= 4096:
            raise ValueError(f"[cuda] page_size={page_size!r} must be an int in [1, 4096]")
        budget = options.get("kv_budget_tokens", 0)
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
            raise ValueError(f"[cuda] kv_budget_tokens={budget!r} must be an int >= 0 (0 = n_ctx)")
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, (int, np.integer)) or n_ctx < 1:
            raise ValueError(f"[cuda] n_ctx={n_ctx!r} must be an int >= 1")
        info = device_info()
        if not info["ok"]:
            raise BackendError(f"cuda: {info['reason']}")
        if dev >= len(info["devices"]):
            raise ValueError(f"[cuda] device={dev} out of range ({len(info['devices'])} CUDA device(s))")
        s = CudaSession.__new__(CudaSession)
        s._setup(
            model,
            n_ctx=int(n_ctx),
            device=int(dev),
            graphs=graphs,
            kv_dtype=kv_dtype,
            page_size=int(page_size),
            kv_budget_tokens=int(budget),
        )
        return s


def load_weights(g, cfg) -> dict[str, tuple]:
    """weights[name] = (array of GGUF bytes / values, type, rows, cols) for the CUDA model; raises
    GGUFError naming the tensor for a type the CUDA backend does not support."""
    from xsil.model.llama import tensor_names

    names = tensor_names(cfg)
    optional = ["output.weight"] + [f"blk.{i}.attn_{x}.bias" for i in range(cfg.n_layer) for x in "qkv"]
    missing = [n for n in names if n not in g.tensors]
    if missing:
        raise GGUFError(f"tensors missing for {cfg.arch}: {', '.join(missing[:5])}")
    weights = {}
    for name in names + [n for n in optional if n in g.tensors]:
        ti = g.tensor_info(name)
        if ti.type_name not in SUPPORTED_TYPES:
            raise GGUFError(
                f"tensor {name!r} has type {ti.type_name}; the cuda backend supports "
                f"{', '.join(SUPPORTED_TYPES)}"
            )
        if len(ti.dims) > 2:
            raise GGUFError(f"tensor {name!r} has {len(ti.dims)} dims; expected 1 or 2")
        rows = ti.dims[1] if len(ti.dims) == 2 else 1
        weights[name] = (g.tensor(name), ti.type_name, rows, ti.dims[0])
    return weights


def _mma_status() -> str:
    try:
        ext, why = _load_ext()
        return ext.mma_status() if ext is not None else f"unknown ({why})"
    except Exception as e:  # pragma: no cover - describe() never raises
        return f"unknown ({e})"


class CudaSession(Session):
    backend_name = "cuda"

    def _setup(
        self,
        path: str,
        *,
        n_ctx: int,
        device: int,
        graphs: bool = True,
        kv_dtype: str = "f16",
        page_size: int = 16,
        kv_budget_tokens: int = 0,
    ):
        from xsil.model.gguf import GGUFFile
        from xsil.model.llama import LlamaConfig
        from xsil.model.tokenizer import from_gguf

        _cuda, why = _load_ext()
        if _cuda is None:
            raise BackendError(f"cuda: {why}")
        t0 = time.perf_counter()
        self.path = path
        self.device_index = device
        g = GGUFFile(path)
        try:
            self.config = cfg = LlamaConfig.from_gguf(g)
            cfg.check_n_ctx(int(n_ctx))
            self.tokenizer = from_gguf(g)
            weights = load_weights(g, cfg)
            t1 = time.perf_counter()
            try:
                self.native = _cuda.LlamaModel(
                    cfg.as_core(),
                    weights,
                    int(n_ctx),
                    int(device),
                    kv_dtype=kv_dtype,
                    page_size=page_size,
                    kv_budget_tokens=kv_budget_tokens,
                )
            except ValueError as e:
                if str(e).startswith("[model] tensor"):
                    raise GGUFError(f"{path}: {e}") from None
                raise
            del weights
            self.native.graphs = graphs
        finally:
            g.close()
        self.load_s = dict(parse=t1 - t0, upload=time.perf_counter() - t1)
        self.n_vocab = cfg.n_vocab
        self.n_ctx = int(n_ctx)
        self.kv_dtype = kv_dtype
        info = device_info()
        self.device_name = info["devices"][device]["name"] if info["ok"] else "?"

    @property
    def n_past(self) -> int:
        return int(self.native.n_past)

    def _call(self, ids: np.ndarray, all_logits: bool) -> np.ndarray:
        try:
            return self.native.forward(np.ascontiguousarray(ids, np.int32), all_logits)
        except ValueError as e:
            msg = str(e)
            if msg.startswith("[kv_cache]") and ("exhausted" in msg or "past n_ctx" in msg):
                raise ContextOverflowError(msg) from None
            raise

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        return self._call(ids, True)

    def _forward_last(self, ids: np.ndarray) -> np.ndarray:
        return self._call(ids, False)

    def _reset(self) -> None:
        self.native.reset()

    def _close(self) -> None:
        if getattr(self, "native", None) is not None:
            self.native.close()
            self.native = None

    def describe(self) -> dict[str, Any]:
        from xsil.model.llama import peak_rss_bytes

        cfg = self.config
        return dict(
            backend="cuda",
            device=self.device_name,
            device_index=self.device_index,
            model=dict(
                path=self.path, arch=cfg.arch, n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_vocab=cfg.n_vocab
            ),
            placement={"all ops": f"cuda:{self.device_index} ({self.device_name})"},
            cuda_graphs=bool(self.native.graphs),
            # tensor-core prefill GEMM: "on (...)" or "off: <reason>" (XSIL_CUDA_MMA=0, failed self-check)
            mma_gemm=str(_mma_status()),
            memory=dict(
                weight_bytes=int(self.native.weight_bytes),
                kv_bytes=int(self.native.kv_bytes),
                kv_dtype=self.kv_dtype,
                n_ctx=self.n_ctx,
                kv_layout="paged",
                kv_cache=dict(self.native.kv_stats),
            ),
            load=dict(phases_s=dict(self.load_s), peak_rss_bytes=peak_rss_bytes()),
        )
