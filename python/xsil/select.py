"""Backend selection: an explicit list wins, then XSIL_BACKEND, then probe score. The native `cpu`
backend is the floor. The choice comes with an explanation a person can read."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

from . import registry


@dataclass
class Choice:
    candidates: List[str]     # in the order they will be tried
    explanation: str


def choose(backend: Union[str, Sequence[str], None] = "auto") -> Choice:
    """Order the backends to try. ``"auto"`` (or None): XSIL_BACKEND if set, else every available
    backend that scores above `cpu`, by descending score, then `cpu` as the floor (a backend scoring
    below cpu, such as ort-cpu or an NPU simulator, is only used when asked for by name)."""
    if backend is None:
        backend = "auto"
    if isinstance(backend, str) and backend != "auto":
        want = [backend]
        why = f"asked for {backend}"
    elif not isinstance(backend, str):
        want = list(backend)
        if not want:
            raise ValueError("[session] backend list is empty")
        why = f"asked for {' > '.join(want)}"
    else:
        env = os.environ.get("XSIL_BACKEND", "").strip()
        if env:
            want = [b.strip() for b in env.split(",") if b.strip()]
            why = f"XSIL_BACKEND={env}"
        else:
            want = []
            why = ""
    known = registry.names()
    for w in want:
        if w not in known:
            raise ValueError(f"[session] unknown backend {w!r}; registered backends: {', '.join(known)}")
    if want:
        return Choice(want, why)
    # auto: rank by probe score
    rows = registry.table()
    avail = sorted((r for r in rows if r.available), key=lambda r: -r.score)
    # `cpu` is the floor: a backend scoring below it (e.g. ort-cpu, or an NPU simulator) is never
    # preferred over it by auto, and since cpu opens whatever it supports, nothing after it is tried
    cpu_score = next((r.score for r in avail if r.name == "cpu"), 0)
    order = [r.name for r in avail if r.name != "cpu" and r.score > cpu_score]
    order.append("cpu")
    chosen = order[0]
    skipped = [f"{r.name}: {r.reason}" for r in rows if r.name != chosen and not r.available]
    ranked_below = [f"{r.name} (score {r.score})" for r in avail if r.name != chosen]
    parts = [f"chose {chosen}: {next((r.reason for r in rows if r.name == chosen), '')}"]
    if ranked_below:
        parts.append("ranked below: " + ", ".join(ranked_below))
    if skipped:
        parts.append("skipped " + "; ".join(skipped))
    return Choice(order, "auto " + "; ".join(parts))
