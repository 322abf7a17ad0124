"""The backend contract: what every backend plugin provides, as small protocols and plain data.

A backend is a small object with ``name``, ``api_version``, ``probe()``, ``supports(spec)`` and
``open(model, **options)``; ``open`` returns a :class:`Session`. See ``backends/README.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np

# 1: open(model, *, n_ctx, kv_dtype, threads, **options)
# 2: open() also takes ``strict`` (keyword): True means the caller wants every op on the backend's
#    own device, no silent fallback inside it (e.g. ONNX Runtime's CPU-EP fallback is disabled).
#    Backends declaring api_version 1 are still opened, without the keyword.
API_VERSION = 2


@dataclass(frozen=True)
class Device:
    """One piece of silicon a backend can run on."""

    name: str                 # e.g. "AMD EPYC (avx512)", "NVIDIA H100", "HTP (x86_64 simulator)"
    kind: str                 # "cpu", "gpu", "npu"
    detail: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Probe:
    """Result of a cheap availability check. score 0 means unavailable; reason says why (or what
    was found) in words a person can act on."""

    score: int
    reason: str
    devices: Sequence[Device] = ()

    @property
    def available(self) -> bool:
        return self.score > 0


@dataclass(frozen=True)
class Support:
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """What a backend needs to know to decide whether it can run a model, without loading it."""

    path: str
    arch: str
    tensor_types: Sequence[str]
    n_params: int
    n_layer: int
    n_embd: int
    n_vocab: int


def model_support(spec: "ModelSpec", weight_types: Sequence[str], who: str = "",
                  archs: Optional[Sequence[str]] = None) -> Support:
    """The common supports() check: an architecture in archs (default: every one xsil's loader
    accepts, xsil.model.llama.SUPPORTED_ARCHS) and tensor types in weight_types."""
    from .model.llama import SUPPORTED_ARCHS

    archs = tuple(SUPPORTED_ARCHS if archs is None else archs)
    if spec.arch not in archs:
        by = f" by {who}" if who else ""
        extra = ""
        if spec.arch in SUPPORTED_ARCHS:
            extra = "; xsil's cpu backend runs it"
        return Support(False, f"architecture {spec.arch} not supported{by} (supported: {', '.join(archs)}){extra}")
    bad = sorted(set(spec.tensor_types) - set(weight_types))
    if bad:
        by = f" by {who}" if who else ""
        return Support(False, f"tensor types {', '.join(bad)} not supported{by} (supported: {', '.join(weight_types)})")
    return Support(True)


@runtime_checkable
class Backend(Protocol):
    name: str
    api_version: int

    def probe(self) -> Probe:
        """Cheap (no model, no big allocation), never raises."""
        ...

    def supports(self, spec: ModelSpec) -> Support:
        ...

    def options(self) -> Dict[str, str]:
        """Backend-specific options accepted by open(), with one-line descriptions."""
        ...

    def open(self, model: str, **options: Any) -> "Session":
        """``open(model, *, n_ctx, kv_dtype, threads, strict, **backend_options)`` (``strict``
        from api_version 2 on)."""
        ...


@dataclass
class GenerationEvent:
    """One streamed step of :meth:`Session.generate`."""

    token_id: int
    text: str                          # the new text this token completes (may be "" mid-UTF-8)
    index: int                         # 0-based index of the generated token
    finish_reason: Optional[str] = None  # "stop" | "length" | "eos" on the last event
    logprob: Optional[float] = None


class Session:
    """Uniform session over every backend. Subclasses implement ``_forward(ids) -> logits``,
    ``_reset()``, ``_close()``, ``n_past``, ``tokenizer``, ``n_vocab`` and ``describe()``."""

    backend_name: str = "?"
    tokenizer: Any = None
    n_vocab: int = 0
    n_ctx: int = 0
    selection: str = ""          # how this backend was chosen (filled by xsil.Session)

    def __new__(cls, *args: Any, **kwargs: Any):
        # xsil.Session(model, backend=..., ...) picks and opens a backend; backends create their
        # own subclass instances with cls.__new__(cls) and set them up in _setup().
        if cls is Session:
            from .session import open_session

            return open_session(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """``xsil.Session(model, backend="auto", strict=False, n_ctx=4096, kv_dtype="f16",
        threads=None, **backend_options)``: see :func:`xsil.session.open_session`."""

    # -- implemented by backends ---------------------------------------------------------------
    def _forward(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _reset(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    @property
    def n_past(self) -> int:
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        raise NotImplementedError

    # -- common surface -------------------------------------------------------------------------
    _closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("[session] this session is closed")

    def _check_ids(self, token_ids) -> np.ndarray:
        ids = np.asarray(token_ids)
        if ids.ndim == 0:
            ids = ids.reshape(1)
        if ids.ndim != 1:
            raise ValueError(f"[forward] token_ids must be a 1-D sequence of ints, got shape {ids.shape}")
        if ids.size == 0:
            raise ValueError("[forward] token_ids is empty")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"[forward] token_ids must be integers, got dtype {ids.dtype}")
        bad = np.nonzero((ids < 0) | (ids >= self.n_vocab))[0]
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"[forward] token id {int(ids[i])} at index {i} is out of range [0, {self.n_vocab})")
        return ids.astype(np.int32)

    def forward(self, token_ids) -> np.ndarray:
        """Append tokens to the session's KV cache; return float32 logits [len(token_ids), vocab]
        for every position given. A list is a prefill; one token at a time is the decode path."""
        self._check_open()
        ids = self._check_ids(token_ids)
        return self._forward(ids)

    def reset(self) -> None:
        """Empty the KV cache."""
        self._check_open()
        self._reset()

    def close(self) -> None:
        if not self._closed:
            self._close()
            self._closed = True

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def tokenize(self, text: str, add_bos: Optional[bool] = None) -> List[int]:
        return self.tokenizer.encode(text, add_bos=add_bos)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def generate(
        self,
        prompt: Union[str, Sequence[int]],
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: Optional[int] = None,
        stop: Sequence[str] = (),
        stop_tokens: Sequence[int] = (),
        stream: bool = True,
        prefill_chunk: int = 512,
    ) -> Iterator[GenerationEvent]:
        """Generate after `prompt` (text, tokenized with the model's tokenizer, or token ids),
        continuing from what the cache holds. Yields a :class:`GenerationEvent` per token; the
        last one has ``finish_reason`` set. With ``stream=False`` the events come as a list."""
        from .model.sampling import Sampler, SamplingParams

        self._check_open()
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) or max_tokens < 1:
            raise ValueError(f"[generate] max_tokens={max_tokens!r} must be an int >= 1")
        if isinstance(stop, str):
            stop = [stop]
        sampler = Sampler(SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty, seed=seed))
        if isinstance(prompt, str):
            ids = self.tokenize(prompt, add_bos=None if self.n_past == 0 else False)
        else:
            ids = list(self._check_ids(prompt))
        it = self._generate(ids, max_tokens, sampler, list(stop), set(int(t) for t in stop_tokens), prefill_chunk)
        return it if stream else list(it)

    def _generate(self, ids, max_tokens, sampler, stop, stop_tokens, prefill_chunk) -> Iterator[GenerationEvent]:
        history = list(ids)
        logits = None
        for i in range(0, len(ids), prefill_chunk):
            logits = self.forward(np.asarray(ids[i:i + prefill_chunk], np.int32))
        if logits is None:
            raise ValueError("[generate] empty prompt: give at least one token (or text with BOS)")
        last = logits[-1]
        pending = b""
        text_so_far = ""
        for n in range(max_tokens):
            tid = sampler(last, history)
            history.append(tid)
            eog = tid in stop_tokens or self.tokenizer.is_eog(tid)
            pending += self.tokenizer.token_bytes(tid)
            try:
                piece = pending.decode("utf-8")
                pending = b""
            except UnicodeDecodeError:
                piece = ""  # wait for the rest of a multi-byte character
                if len(pending) > 8:
                    piece, pending = pending.decode("utf-8", errors="replace"), b""
            text_so_far += piece
            finish = None
            if eog:
                finish = "eos"
            elif any(s and s in text_so_far for s in stop):
                finish = "stop"
            elif n == max_tokens - 1:
                finish = "length"
            yield GenerationEvent(tid, piece, n, finish)
            if finish:
                return
            last = self.forward(np.asarray([tid], np.int32))[0]
