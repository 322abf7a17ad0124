"""Token sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np


@dataclass
class SamplingParams:
    temperature: float = 0.0          # 0 = greedy
    top_k: int = 0                    # 0 = off
    top_p: float = 1.0                # 1 = off
    min_p: float = 0.0                # 0 = off; keep tokens with p >= min_p * p_max
    repetition_penalty: float = 1.0   # 1 = off; divides positive / multiplies negative logits of seen tokens
    repetition_window: int = 64       # how many recent tokens the penalty looks at
    seed: Optional[int] = None

    def validate(self) -> "SamplingParams":
        def bad(name, v, want):
            raise ValueError(f"[sampling] {name}={v!r} is invalid: {want}")

        if not np.isfinite(self.temperature) or self.temperature < 0:
            bad("temperature", self.temperature, "must be >= 0 (0 = greedy)")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            bad("top_k", self.top_k, "must be an int >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            bad("top_p", self.top_p, "must be in (0, 1]")
        if not 0 <= self.min_p < 1:
            bad("min_p", self.min_p, "must be in [0, 1)")
        if not np.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            bad("repetition_penalty", self.repetition_penalty, "must be > 0 (1 = off)")
        if self.repetition_window < 0:
            bad("repetition_window", self.repetition_window, "must be >= 0")
        return self


class Sampler:
    def __init__(self, params: SamplingParams):
        self.p = params.validate()
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        p = self.p
        logits = np.asarray(logits, np.float32)
        if p.repetition_penalty != 1.0 and len(history) and p.repetition_window:
            logits = logits.copy()
            seen = np.unique(np.asarray(history[-p.repetition_window:], np.int64))
            seen = seen[(seen >= 0) & (seen < logits.shape[0])]
            v = logits[seen]
            logits[seen] = np.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)
        if p.temperature == 0.0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / p.temperature
        idx = np.arange(z.shape[0])
        if p.top_k and p.top_k < z.shape[0]:
            keep = np.argpartition(-z, p.top_k - 1)[: p.top_k]
            idx, z = keep, z[keep]
        order = np.argsort(-z, kind="stable")
        idx, z = idx[order], z[order]
        prob = np.exp(z - z[0])
        prob /= prob.sum()
        if p.min_p > 0:
            n = max(1, int(np.count_nonzero(prob >= p.min_p * prob[0])))
            idx, prob = idx[:n], prob[:n]
        if p.top_p < 1.0:
            c = np.cumsum(prob)
            n = int(np.searchsorted(c, p.top_p * c[-1]) + 1)
            idx, prob = idx[:n], prob[:n]
        prob = prob / prob.sum()
        return int(idx[self.rng.choice(prob.shape[0], p=prob)])
