"""`cpu`: xsil's own kernels on the host CPU (the floor every other backend falls back to)."""

from __future__ import annotations

import platform
from typing import Any, Dict

import numpy as np

from xsil import _core
from xsil.backend import API_VERSION, Device, ModelSpec, Probe, Session, Support, model_support

_OPTIONS = {
    "isa": "ISA tier to run (default: best available; see xsil.cpu_info())",
    "pack": "repack weights in place for the tier's fastest layout (default True)",
    "page_size": "KV cache page size in tokens (default 16)",
    "context_shift": "'error' (default) or 'shift': what happens when the KV budget is full",
    "n_keep": "tokens a context shift never drops (default 0)",
}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class CpuBackend:
    name = "cpu"
    api_version = API_VERSION
    kind = "cpu"

    def probe(self) -> Probe:
        try:
            info = _core.cpu_info()
            dev = Device(f"{_cpu_name()}", "cpu", {"isa": info["tier"], "threads": info["threads"],
                                                   "features": ",".join(info["features"])})
            return Probe(10, f"{info['threads']} threads, ISA tier {info['tier']}", [dev])
        except Exception as e:  # never raise from probe
            return Probe(0, f"native core unusable: {e}")

    def supports(self, spec: ModelSpec) -> Support:
        from xsil.model.llama import WEIGHT_TYPES

        return model_support(spec, WEIGHT_TYPES)

    def options(self) -> Dict[str, str]:
        return dict(_OPTIONS)

    def open(self, model: str, *, n_ctx: int = 4096, kv_dtype: str = "f16", threads=None, strict: bool = False,
             **options: Any) -> "CpuSession":
        # strict: nothing to fall back from inside this backend (every op runs on xsil's kernels)
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(f"[cpu] unknown option(s) {', '.join(unknown)}; valid options: {', '.join(_OPTIONS)}")
        s = CpuSession.__new__(CpuSession)
        s._setup(model, n_ctx=n_ctx, kv_dtype=kv_dtype, threads=threads, **options)
        return s


class CpuSession(Session):
    backend_name = "cpu"

    def _setup(self, path: str, *, n_ctx: int, kv_dtype: str, threads, isa=None, pack: bool = True,
                 page_size: int = 16, context_shift: str = "error", n_keep: int = 0):
        import time

        from xsil.model.llama import LlamaModel

        self._t_open = time.perf_counter()
        self._first_done = False
        self.model = LlamaModel(path, n_ctx=n_ctx, kv_dtype=kv_dtype, isa=isa, threads=threads, pack=pack,
                                page_size=page_size, context_shift=context_shift, n_keep=n_keep)
        self.tokenizer = self.model.tokenizer
        self.n_vocab = self.model.config.n_vocab
        self.n_ctx = self.model.n_ctx
        self.seq = self.model.cache.add_sequence()

    @property
    def n_past(self) -> int:
        return int(self.model.cache.length(self.seq))

    def _forward(self, ids: np.ndarray, all_logits: bool = True) -> np.ndarray:
        out = self.model.forward(ids, self.seq, all_logits)
        self._mark_first()
        return out if all_logits else out[None]

    def _forward_last(self, ids: np.ndarray) -> np.ndarray:
        out = self.model.forward(ids, self.seq, False)
        self._mark_first()
        return out

    def _mark_first(self) -> None:
        if not self._first_done:
            import time

            from xsil.model.llama import peak_rss_bytes

            self._first_done = True
            rep = self.model.report
            rep.phases["first_token_ready"] = time.perf_counter() - self._t_open
            rep.peak_rss = max(rep.peak_rss, peak_rss_bytes())

    def _reset(self) -> None:
        self.model.cache.remove_sequence(self.seq)
        self.seq = self.model.cache.add_sequence()

    def _close(self) -> None:
        if getattr(self, "model", None) is not None:
            self.model.close()
            self.model = None

    def describe(self) -> Dict[str, Any]:
        m = self.model
        st = m.cache.stats()
        cfg = m.config
        return dict(
            backend="cpu",
            device=_cpu_name(),
            isa=m.tier,
            threads=m.native.threads or _core.get_num_threads(),
            model=dict(path=m.path, arch=cfg.arch, n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_vocab=cfg.n_vocab),
            placement={"all ops": f"cpu ({m.tier})"},
            memory=dict(kv_cache=st, weight_bytes=m.report.weight_bytes, kv_dtype=m.kv_dtype, n_ctx=m.n_ctx),
            load=m.report.as_dict(),
        )
