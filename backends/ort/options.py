"""Per-provider option tables: every option a backend's ``open()`` accepts, validated before ONNX
Runtime sees it. An unknown key or a bad value raises ``ValueError`` naming the valid ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence


@dataclass(frozen=True)
class Opt:
    description: str
    default: Any
    choices: Optional[Sequence[Any]] = None  # allowed values (exact)
    kind: Optional[type] = None  # required Python type (bool/int/str)
    check: Optional[Callable[[Any], bool]] = None  # extra predicate
    check_text: str = ""  # what `check` requires, in words

    def validate(self, backend: str, name: str, value: Any) -> Any:
        ok = True
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind is not None:
            ok = isinstance(value, self.kind)
        if ok and self.choices is not None:
            ok = value in self.choices and type(value) is type(next(iter(self.choices)))
        if ok and self.check is not None:
            ok = bool(self.check(value))
        if not ok:
            if self.choices is not None:
                valid = "one of " + ", ".join(repr(c) for c in self.choices)
            elif self.check_text:
                valid = self.check_text
            else:
                valid = f"a {self.kind.__name__ if self.kind else 'value'}"
            raise ValueError(f"[{backend}] option {name}={value!r} is invalid; valid values: {valid}")
        return value


# options every ORT-based backend takes
COMMON: Dict[str, Opt] = {
    "cache": Opt(
        "keep exported graphs / compiled artefacts in the xsil cache dir (default True)", True, kind=bool
    ),
    "graph_optimization_level": Opt(
        "ORT graph optimizations: 'disable', 'basic', 'extended' or 'all' (default)",
        "all",
        choices=("disable", "basic", "extended", "all"),
    ),
    "log_severity": Opt("ORT log level: 0 verbose .. 4 fatal (default 3)", 3, choices=(0, 1, 2, 3, 4)),
}


def validate(backend: str, table: Mapping[str, Opt], options: Mapping[str, Any]) -> Dict[str, Any]:
    """Defaults filled in; raises ValueError for unknown keys or bad values."""
    unknown = sorted(set(options) - set(table))
    if unknown:
        raise ValueError(
            f"[{backend}] unknown option(s) {', '.join(unknown)}; valid options: {', '.join(table)}"
        )
    out = {}
    for k, o in table.items():
        out[k] = o.validate(backend, k, options[k]) if k in options else o.default
    return out


def describe(table: Mapping[str, Opt]) -> Dict[str, str]:
    return {k: o.description for k, o in table.items()}
