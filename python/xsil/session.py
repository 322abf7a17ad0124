"""Opening a session: backend selection, one loud fallback, strict mode."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Optional, Sequence, Union

from . import registry
from .backend import Session
from .errors import BackendError, GGUFError
from .select import choose

log = logging.getLogger("xsil")


def open_session(
    model: Optional[str] = None,
    backend: Union[str, Sequence[str], None] = "auto",
    *,
    strict: bool = False,
    n_ctx: int = 4096,
    kv_dtype: str = "f16",
    threads: Optional[int] = None,
    **backend_options: Any,
) -> Session:
    """Open `model` (a GGUF path; None = the embedded default model) on a backend.

    backend: "auto" (XSIL_BACKEND, else best probe score, `cpu` as the floor), a name, or a
    preference list. If the chosen backend fails to open, xsil falls back once, loudly, to the next
    candidate (ultimately `cpu`); ``strict=True`` never falls back and raises instead.
    """
    if model is None:
        from .model.default import default_model_path

        model = default_model_path()
    model = os.fspath(model)
    if not os.path.exists(model):
        raise FileNotFoundError(f"[session] model file {model!r} does not exist")
    choice = choose(backend)
    candidates = list(choice.candidates)
    if not strict and "cpu" not in candidates:
        candidates.append("cpu")
    explanation = choice.explanation
    errors = []
    for i, name in enumerate(candidates):
        b = registry.get(name)
        p = registry.probe(name)
        if b is None or not p.available:
            why = registry.import_error(name) if b is None else p.reason
            errors.append(f"{name}: unavailable ({why})")
            if strict:
                raise BackendError(f"strict=True: backend {name} is unavailable: {why}")
            continue
        # options belong to the first backend asked for; a fallback gets only those it knows
        opts = dict(backend_options)
        if i > 0:
            known = set(b.options())
            opts = {k: v for k, v in opts.items() if k in known}
        try:
            if getattr(b, "api_version", 1) >= 2:
                opts["strict"] = strict   # contract v2: strict reaches the backend (no fallback inside it)
            s = b.open(model, n_ctx=n_ctx, kv_dtype=kv_dtype, threads=threads, **opts)
        except (ValueError, GGUFError, FileNotFoundError):
            raise  # bad arguments or a bad file fail the same way on every backend
        except Exception as e:
            if strict:
                raise BackendError(f"strict=True: backend {name} failed to open {model!r}: "
                                   f"{type(e).__name__}: {e}") from e
            errors.append(f"{name}: {type(e).__name__}: {e}")
            continue
        if errors:
            msg = f"xsil: fell back to {name} because " + "; ".join(errors)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            explanation += f"; fell back to {name} ({'; '.join(errors)})"
        s.selection = explanation
        log.info("xsil session: %s", explanation)
        return s
    raise BackendError("no backend could open the model: " + "; ".join(errors))
