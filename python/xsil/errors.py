"""Exception hierarchy. Every xsil-specific error derives from :class:`XsilError`; bad arguments
raise plain ``ValueError`` with the op name first."""

from __future__ import annotations


class XsilError(Exception):
    """Base class of xsil's own errors."""


class GGUFError(XsilError):
    """A GGUF file is malformed or uses something xsil does not support. The message names the
    field and the byte offset where it went wrong."""


class ContextOverflowError(XsilError):
    """The KV cache budget (n_ctx) is exhausted."""


class BackendError(XsilError):
    """A backend could not be opened or used."""
