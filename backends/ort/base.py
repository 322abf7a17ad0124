"""Shared base of the ONNX Runtime backends: probe, option validation, export + on-disk cache,
ORT session creation, placement report, and the dynamic-shape KV-cache session.

Nothing here imports onnxruntime at module import time: ``import xsil`` never loads it, and
``probe()`` imports it lazily (and never raises).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from xsil.backend import API_VERSION, ModelSpec, Probe, Session, Support, model_support
from xsil.errors import BackendError, ContextOverflowError

from . import options as O

WEIGHT_TYPES = ("F32", "F16", "Q4_0", "Q8_0", "Q4_K")
# Architectures the exporters (export.py, static.py) write graphs for. qwen3's per-head q/k RMSNorm
# is not exported: qwen3 files are refused here (BackendError, so a non-strict session falls back
# to cpu, loudly) rather than exported without it.
ARCHS = ("llama", "qwen2")
KV_DTYPES = ("f16", "f32")
_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def ort_version() -> Optional[str]:
    """The installed onnxruntime version without importing it (None if absent)."""
    try:
        from importlib.metadata import version

        return version("onnxruntime")
    except Exception:
        return None


def import_ort():
    try:
        import onnxruntime as ort
    except Exception as e:
        raise BackendError(
            f"onnxruntime is not importable ({type(e).__name__}: {e}); "
            f"install it with: pip install 'xsil[ort]'"
        ) from None
    return ort


class OrtBackendBase:
    """One ORT execution provider behind the xsil backend contract. Subclasses set the class
    attributes and override the provider hooks."""

    name = "ort-?"
    api_version = API_VERSION
    kind = "cpu"
    provider = "CPUExecutionProvider"
    table: Mapping[str, O.Opt] = O.COMMON

    # -- contract ----------------------------------------------------------------------------------
    def probe(self) -> Probe:
        try:
            return self._probe()
        except Exception as e:  # never raise
            return Probe(0, f"probe failed: {type(e).__name__}: {e}")

    def _probe(self) -> Probe:
        raise NotImplementedError

    def supports(self, spec: ModelSpec) -> Support:
        return model_support(spec, WEIGHT_TYPES, self.name, ARCHS)

    def options(self) -> Dict[str, str]:
        return O.describe(self.table)

    def open(
        self,
        model: str,
        *,
        n_ctx: int = 4096,
        kv_dtype: str = "f16",
        threads=None,
        strict: bool = False,
        **options: Any,
    ) -> Session:
        opts = O.validate(self.name, self.table, options)
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, (int, np.integer)) or n_ctx < 1:
            raise ValueError(f"[{self.name}] n_ctx={n_ctx!r} must be an int >= 1")
        if kv_dtype not in KV_DTYPES:
            raise ValueError(
                f"[{self.name}] kv_dtype={kv_dtype!r} is not supported; valid: {', '.join(KV_DTYPES)}"
            )
        if threads is not None and (
            isinstance(threads, bool)
            or not isinstance(threads, (int, np.integer))
            or not 1 <= threads <= 1024
        ):
            raise ValueError(f"[{self.name}] threads={threads!r} must be an int in [1, 1024] or None")
        p = self.probe()
        if not p.available:
            raise BackendError(f"{self.name}: {p.reason}")
        cls = self.session_class()
        s = cls.__new__(cls)
        s._setup(
            self, model, n_ctx=int(n_ctx), kv_dtype=kv_dtype, threads=threads, strict=bool(strict), opts=opts
        )
        return s

    # -- provider hooks --------------------------------------------------------------------------
    def check_config(self, cfg) -> None:
        """Raise BackendError for a model shape the exported graph cannot run."""
        if cfg.head_dim % 16:
            raise BackendError(
                f"{self.name}: head_dim={cfg.head_dim} is not supported: ONNX Runtime's "
                f"GroupQueryAttention needs a multiple of 16"
            )

    def session_class(self):
        return OrtSession

    def export_key(self, opts: Dict[str, Any], cfg, n_ctx: int) -> Dict[str, Any]:
        """What the exported graph depends on besides the model (goes into the cache key)."""
        raise NotImplementedError

    def export(self, g, cfg, opts: Dict[str, Any], out_dir: str, *, n_ctx: int, tokenizer) -> Dict[str, Any]:
        """Write the graph(s) into out_dir; return the metadata kept in the cache entry."""
        raise NotImplementedError

    def session_options(self, ort, opts: Dict[str, Any], threads, strict: bool):
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, _LEVELS[opts["graph_optimization_level"]]
        )
        so.log_severity_level = int(opts["log_severity"])
        if threads:
            so.intra_op_num_threads = int(threads)
        so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        # strict: no node may silently run on ORT's CPU EP. (For ort-cpu the CPU EP *is* the device:
        # ORT rejects the flag together with an explicit CPU EP, and there is nothing to fall back from.)
        if strict and self.provider != "CPUExecutionProvider":
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        return so

    def create_session(self, ort, model_path: str, so, opts: Dict[str, Any], entry: str) -> Tuple[Any, Dict]:
        """-> (InferenceSession, extra load-report fields)."""
        return ort.InferenceSession(model_path, so, providers=[self.provider]), {}

    def device_name(self) -> str:
        return self.provider


def placement_report(sess, accelerator: Optional[str]) -> Dict[str, Any]:
    """Which nodes each execution provider took (ORT's recorded EP graph assignment)."""
    by_ep: Dict[str, Dict[str, int]] = {}
    try:
        subs = sess.get_provider_graph_assignment_info()
    except Exception as e:  # older ORT: no record
        return {"available": False, "reason": f"{type(e).__name__}: {e}"}
    total = 0
    for sg in subs:
        ops = by_ep.setdefault(sg.ep_name, {})
        for n in sg.get_nodes():
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
            total += 1
    nodes = {ep: sum(v.values()) for ep, v in by_ep.items()}
    rep: Dict[str, Any] = {"nodes": nodes, "ops": by_ep, "total_nodes": total, "subgraphs": len(subs)}
    if accelerator is not None:
        took = nodes.get(accelerator, 0)
        rep["accelerator"] = accelerator
        rep["accelerator_fraction"] = took / total if total else 0.0
        rep["complete"] = took == total
    return rep


def warn_partial(backend, placement: Dict[str, Any], what: str = "graph") -> None:
    """Warn when an accelerator took only part of the graph (the rest falls back to ORT's CPU EP)."""
    if placement.get("accelerator") and not placement.get("complete", True):
        others = ", ".join(k for k in placement.get("nodes", {}) if k != backend.provider)
        warnings.warn(
            f"xsil {backend.name}: {backend.provider} took only {placement['accelerator_fraction']:.0%} "
            f"of the {what}'s nodes; the rest run on {others or 'nothing'}",
            RuntimeWarning,
            stacklevel=6,
        )


class OrtSession(Session):
    """Dynamic-shape session: one graph for prefill and decode; KV cache in xsil-owned fp32
    buffers bound as both the past_* inputs and the present_* outputs (GroupQueryAttention's
    shared-buffer mode), so a step appends in place and nothing is copied."""

    backend_name = "ort-?"

    def _setup(
        self,
        backend: OrtBackendBase,
        path: str,
        *,
        n_ctx: int,
        kv_dtype: str,
        threads,
        strict: bool,
        opts: Dict[str, Any],
    ) -> None:
        from xsil.model.gguf import GGUFFile
        from xsil.model.llama import LlamaConfig, peak_rss_bytes
        from xsil.model.tokenizer import from_gguf

        from . import cache

        ort = import_ort()
        self._t_open = time.perf_counter()
        self._first_done = False
        self.backend = backend
        self.backend_name = backend.name
        self.path = path
        self.strict = strict
        self.opts = opts
        phases: Dict[str, float] = {}
        t0 = time.perf_counter()
        g = GGUFFile(path)
        self._gguf = g
        self.config = cfg = LlamaConfig.from_gguf(g)
        if cfg.arch not in ARCHS:
            raise BackendError(
                f"{backend.name}: architecture {cfg.arch} is not exported to ONNX (supported: "
                f"{', '.join(ARCHS)}); xsil's cpu backend runs it"
            )
        cfg.check_n_ctx(n_ctx)
        self.tokenizer = from_gguf(g)
        if self.tokenizer.vocab_size != cfg.n_vocab:
            from xsil.errors import GGUFError

            raise GGUFError(
                f"tokenizer has {self.tokenizer.vocab_size} tokens but token_embd has {cfg.n_vocab} rows"
            )
        bad = sorted({t.type_name for t in g.tensors.values()} - set(WEIGHT_TYPES))
        if bad:
            from xsil.errors import GGUFError

            raise GGUFError(
                f"{os.path.basename(path)}: tensor types {', '.join(bad)} are not supported by "
                f"{backend.name} (supported: {', '.join(WEIGHT_TYPES)})"
            )
        backend.check_config(cfg)
        self.n_vocab = cfg.n_vocab
        self.n_ctx = n_ctx
        self.kv_dtype_requested = kv_dtype
        phases["open_validate"] = time.perf_counter() - t0

        # export (or reuse the cached export); the KV dtype the graph is built for is an export option
        opts = dict(opts, kv_dtype=kv_dtype)
        self.opts = opts
        t1 = time.perf_counter()
        key = backend.export_key(opts, cfg, n_ctx)
        export_args = dict(n_ctx=n_ctx, tokenizer=self.tokenizer)
        self._tmpdir = None
        hit = False
        cache_error = None
        entry = None
        meta = None
        if opts["cache"]:
            try:
                mh = cache.model_sha256(path)
                phases["hash"] = time.perf_counter() - t1
                entry = cache.entry_dir(mh, backend.name, key)
                meta = cache.read_meta(entry)
                if meta is None:
                    stage = cache.staging_dir(entry)
                    try:
                        info = backend.export(g, cfg, opts, stage, **export_args)
                        cache.write_meta(
                            stage, dict(info, key=key, model_sha256=mh, model=os.path.abspath(path))
                        )
                        entry = cache.publish(stage, entry)
                    except BaseException:
                        shutil.rmtree(stage, ignore_errors=True)
                        raise
                    meta = cache.read_meta(entry) or {}
                else:
                    hit = True
            except OSError as e:  # an unwritable / full cache dir: export uncached, say so
                cache_error = f"{type(e).__name__}: {e}"
                entry = meta = None
        if meta is None:
            self._tmpdir = tempfile.mkdtemp(prefix="xsil-ort-")
            entry = self._tmpdir
            meta = backend.export(g, cfg, opts, entry, **export_args)
        self.entry = entry
        self.meta = meta
        phases["export" if not hit else "export_cached"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        try:
            extra = self._open_sessions(ort, backend, entry, threads, strict, opts)
        except BackendError:
            raise
        except Exception as e:
            raise BackendError(f"{backend.name}: ONNX Runtime could not create the session: {e}") from e
        phases["session_create"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        self._bind()
        phases["bind"] = time.perf_counter() - t3
        phases["total"] = time.perf_counter() - t0
        self.load = dict(
            phases_s=phases,
            peak_rss_bytes=peak_rss_bytes(),
            file_bytes=g.size,
            cache=dict(
                enabled=bool(opts["cache"]) and cache_error is None,
                hit=hit,
                dir=entry if self._tmpdir is None else None,
                error=cache_error,
                **extra,
            ),
            export=dict(
                nodes=meta.get("nodes"),
                op_counts=meta.get("op_counts"),
                weights_bytes=meta.get("weights_bytes"),
            ),
        )
        self.weight_bytes_per_token = int(meta.get("matmul_weight_bytes") or 0) or None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)  # ORT has read the files
            self._tmpdir = None

    def _open_sessions(
        self, ort, backend: OrtBackendBase, entry: str, threads, strict: bool, opts: Dict[str, Any]
    ) -> Dict[str, Any]:
        so = backend.session_options(ort, opts, threads, strict)
        self.sess, extra = backend.create_session(ort, os.path.join(entry, "model.onnx"), so, opts, entry)
        self.placement = placement_report(
            self.sess, None if backend.provider == "CPUExecutionProvider" else backend.provider
        )
        warn_partial(backend, self.placement)
        return extra

    # -- buffers ---------------------------------------------------------------------------------
    def _bind(self) -> None:
        ort = import_ort()
        cfg = self.config
        D = cfg.head_dim
        self._past = 0
        inv = cfg.rope_inv_freq()  # with the frequency factors (rope_freqs.weight), if any
        th = np.arange(self.n_ctx, dtype=np.float64)[:, None] * cfg.rope_freq_scale * inv[None, :]
        self.kv_dtype = self.meta.get("kv_dtype", "f32")
        kvt = np.float16 if self.kv_dtype == "f16" else np.float32
        self._cos = np.ascontiguousarray(np.cos(th), kvt)
        self._sin = np.ascontiguousarray(np.sin(th), kvt)
        # the KV budget: 2 x n_layer x [1, n_head_kv, n_ctx, head_dim], allocated once
        shape = (1, cfg.n_head_kv, self.n_ctx, D)
        self._kv = [np.zeros(shape, kvt) for _ in range(2 * cfg.n_layer)]
        self._kv_ov = [ort.OrtValue.ortvalue_from_numpy(a) for a in self._kv]
        self._logits = np.empty((0, cfg.n_vocab), np.float32)
        io = self.sess.io_binding()
        io.bind_cpu_input("cos_cache", self._cos)
        io.bind_cpu_input("sin_cache", self._sin)
        for i in range(cfg.n_layer):
            for j, kind in enumerate(("key", "value")):
                ov = self._kv_ov[2 * i + j]
                io.bind_ortvalue_input(f"past_{kind}_{i}", ov)
                io.bind_ortvalue_output(f"present_{kind}_{i}", ov)
        self._io = io

    @property
    def kv_bytes(self) -> int:
        return int(sum(a.nbytes for a in self._kv))

    @property
    def n_past(self) -> int:
        return self._past

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        return self._run(ids, last_only=False)

    def _forward_last(self, ids: np.ndarray) -> np.ndarray:
        """Logits of the last position only ([vocab]): the LM head runs on one row."""
        return self._run(np.asarray(ids, np.int32), last_only=True)[0]

    def _run(self, ids: np.ndarray, last_only: bool) -> np.ndarray:
        ort = import_ort()
        S = int(ids.shape[0])
        P = self._past
        if P + S > self.n_ctx:
            raise ContextOverflowError(
                f"[kv_cache] {S} new token(s) after {P} do not fit the KV budget "
                f"n_ctx={self.n_ctx} ({self.backend_name})"
            )
        R = 1 if last_only else S
        if self._logits.shape[0] < R:
            self._logits = np.empty((max(R, 2 * self._logits.shape[0]), self.n_vocab), np.float32)
        out = self._logits[:R].reshape(1, R, self.n_vocab)
        io = self._io
        io.bind_cpu_input("input_ids", ids.astype(np.int64).reshape(1, S))
        io.bind_cpu_input(
            "logit_rows", np.array([S - 1], np.int64) if last_only else np.arange(S, dtype=np.int64)
        )
        io.bind_cpu_input("seqlens_k", np.array([P + S - 1], np.int32))
        io.bind_cpu_input("total_sequence_length", np.array(P + S, np.int32))
        io.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(out))
        self.sess.run_with_iobinding(io)
        self._past = P + S
        self._mark_first()
        return out[0].copy()

    def _mark_first(self) -> None:
        if not self._first_done:
            from xsil.model.llama import peak_rss_bytes

            self._first_done = True
            self.load["phases_s"]["first_token_ready"] = time.perf_counter() - self._t_open
            self.load["peak_rss_bytes"] = max(self.load["peak_rss_bytes"], peak_rss_bytes())

    def _reset(self) -> None:
        self._past = 0  # GroupQueryAttention reads only rows < seqlens_k + 1: no clearing needed

    def _close(self) -> None:
        self._io = None
        self.sess = None
        self._kv_ov = []
        self._kv = []
        g = getattr(self, "_gguf", None)
        if g is not None:
            g.close()
            self._gguf = None
        if getattr(self, "_tmpdir", None):
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def describe(self) -> Dict[str, Any]:
        import onnxruntime as ort

        cfg = self.config
        return dict(
            backend=self.backend_name,
            device=self.backend.device_name(),
            provider=self.backend.provider,
            isa=f"ORT {ort.__version__} {self.backend.provider}",
            onnxruntime=ort.__version__,
            strict=self.strict,
            options=dict(self.opts),
            model=dict(
                path=self.path, arch=cfg.arch, n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_vocab=cfg.n_vocab
            ),
            placement=self.placement,
            memory=dict(
                kv_bytes=self.kv_bytes,
                kv_dtype=self.kv_dtype,
                kv_dtype_requested=self.kv_dtype_requested,
                kv_note="f16: attention runs in fp16 (GroupQueryAttention keeps its cache in its input type)",
                n_ctx=self.n_ctx,
                weight_bytes=self.meta.get("weights_bytes"),
                weight_bytes_per_token=self.weight_bytes_per_token,
            ),
            load=self.load,
        )


def find_spec(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except Exception:
        return False


def list_names(xs: List[str]) -> str:
    return ", ".join(xs)
