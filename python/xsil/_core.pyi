"""Type stubs for the native module ``xsil._core`` (csrc/bindings/*.cpp).

The public, documented API is :mod:`xsil.kernels` (re-exported by :mod:`xsil`), which validates
Python-level argument types before calling in here.
"""

from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

class PackedWeights:
    """Weights repacked once for one ISA tier; same byte size as the GGUF rows they came from."""

    @property
    def fmt(self) -> str: ...
    @property
    def tier(self) -> str: ...
    @property
    def shape(self) -> tuple[int, int]: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def inplace(self) -> bool: ...

# --- cpu (bind_cpu.cpp) ---
# {"arch", "vendor", "features", "tiers": [{"name", "available", "reason"}], "available_tiers",
#  "tier", "threads", "hardware_threads"}
def cpu_info() -> dict[str, Any]: ...
def set_isa(tier: str) -> None: ...
def get_isa() -> str: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...

# --- quant (bind_quant.cpp); threads: None = the whole pool, else 1..1024 ---
def quantize(x: np.ndarray, fmt: str, threads: int | None = None) -> npt.NDArray[np.uint8]: ...
def dequantize(blocks: np.ndarray, fmt: str, cols: int, threads: int | None = None) -> npt.NDArray[np.float32]: ...
# {"name", "ggml_type", "block_size", "type_size"}
def format_info(fmt: str) -> dict[str, Any]: ...

# --- matmul (bind_matmul.cpp) ---
def matmul(
    x: np.ndarray,
    w: np.ndarray | PackedWeights,
    fmt: str,
    threads: int | None = None,
    isa: str = "",
    exact: bool = False,
) -> npt.NDArray[np.float32]: ...
def pack(
    w: np.ndarray,
    fmt: str,
    isa: str = "",
    inplace: bool = False,
    threads: int | None = None,
) -> PackedWeights | None: ...

# --- model (bind_model.cpp) ---
class LlamaModel:
    """Native Llama-family decoder (use xsil.model.llama.LlamaModel)."""

    # config: n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_vocab, rms_eps, rope_mode,
    #   rope_freq_base, rope_freq_scale; weights: name -> (array | PackedWeights, fmt, rows, cols);
    # kv: page_size, k_dtype, v_dtype, budget_tokens, n_ctx, context_shift, n_keep
    def __init__(
        self, config: dict[str, Any], weights: dict[str, Any], kv: dict[str, Any], isa: str = "", threads: int = 0
    ) -> None: ...
    def forward(self, tokens: np.ndarray, seq_id: int, all_logits: bool = True) -> npt.NDArray[np.float32]: ...
    @property
    def cache(self) -> KVCache: ...
    @property
    def tier(self) -> str: ...
    @property
    def threads(self) -> int: ...
    @threads.setter
    def threads(self, value: int) -> None: ...
    @property
    def exact(self) -> bool: ...
    @exact.setter
    def exact(self, value: bool) -> None: ...
    @property
    def weight_bytes_per_token(self) -> int: ...
