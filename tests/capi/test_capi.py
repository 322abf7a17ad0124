"""The C ABI (libxsil) loaded through cffi in ABI mode: results bit-identical to the Python binding
on every tier, sizes validated before memory is touched, status codes and messages, versions; and a
small C program compiled against the installed header and library."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

import xsil

cffi = pytest.importorskip("cffi")

# Trimmed copy of csrc/include/xsil/xsil.h (cffi's parser takes no preprocessor lines).
CDEF = """
typedef int32_t xsil_status;
typedef int32_t xsil_format;
const char* xsil_version(void);
int32_t xsil_abi_version(void);
const char* xsil_last_error(void);
const char* xsil_status_name(xsil_status status);
int32_t xsil_format_block_size(xsil_format fmt);
int32_t xsil_format_type_size(xsil_format fmt);
const char* xsil_format_name(xsil_format fmt);
int64_t xsil_format_row_bytes(xsil_format fmt, int64_t cols);
int32_t xsil_cpu_tier_count(void);
const char* xsil_cpu_tier_name(int32_t index);
int32_t xsil_cpu_tier_available(int32_t index);
const char* xsil_cpu_tier_reason(int32_t index);
const char* xsil_cpu_arch(void);
const char* xsil_cpu_get_tier(void);
xsil_status xsil_cpu_set_tier(const char* name);
int32_t xsil_get_num_threads(void);
xsil_status xsil_set_num_threads(int32_t n);
xsil_status xsil_quantize(xsil_format fmt, const float* x, int64_t rows, int64_t cols, void* out,
                          size_t out_bytes, int32_t threads);
xsil_status xsil_dequantize(xsil_format fmt, const void* blocks, size_t blocks_bytes, int64_t rows,
                            int64_t cols, float* out, size_t out_floats, int32_t threads);
xsil_status xsil_matmul(const float* x, int64_t M, int64_t K, const void* w, size_t w_bytes, int64_t N,
                        xsil_format fmt, float* y, size_t y_floats, int32_t threads, const char* tier,
                        int32_t exact);
"""

OK, INVALID, BAD_FMT, BAD_TIER = 0, -1, -2, -3
FMT_ID = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}

ffi = cffi.FFI()
ffi.cdef(CDEF)


@pytest.fixture(scope="module")
def lib():
    return ffi.dlopen(str(xsil.capi_library_path()))


def header_text() -> str:
    return (xsil.capi_include_dir() / "xsil" / "xsil.h").read_text()


def err(lib) -> str:
    return ffi.string(lib.xsil_last_error()).decode()


def fptr(a: np.ndarray):
    return ffi.cast("float*", ffi.from_buffer(a))


def vptr(a: np.ndarray):
    return ffi.cast("void*", ffi.from_buffer(a))


def c_quantize(lib, x: np.ndarray, fmt: str, threads: int = 0) -> np.ndarray:
    rows, cols = x.shape
    out = np.zeros((rows, lib.xsil_format_row_bytes(FMT_ID[fmt], cols)), np.uint8)
    st = lib.xsil_quantize(FMT_ID[fmt], fptr(x), rows, cols, vptr(out), out.nbytes, threads)
    assert st == OK, err(lib)
    return out


def c_dequantize(lib, blocks: np.ndarray, fmt: str, cols: int, threads: int = 0) -> np.ndarray:
    rows = blocks.nbytes // lib.xsil_format_row_bytes(FMT_ID[fmt], cols)
    out = np.zeros((rows, cols), np.float32)
    st = lib.xsil_dequantize(
        FMT_ID[fmt], vptr(blocks), blocks.nbytes, rows, cols, fptr(out), out.size, threads
    )
    assert st == OK, err(lib)
    return out


def c_matmul(lib, x, w, fmt, *, threads=0, tier=None, exact=False):
    M, K = x.shape
    N = w.shape[0]
    y = np.zeros((M, N), np.float32)
    t = ffi.NULL if tier is None else tier.encode()
    st = lib.xsil_matmul(fptr(x), M, K, vptr(w), w.nbytes, N, FMT_ID[fmt], fptr(y), y.size, threads, t, exact)
    assert st == OK, err(lib)
    return y


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


def random_blocks(rng, fmt: str, rows: int, cols: int) -> np.ndarray:
    """Random GGUF rows with finite fp16 scales (d, and dmin / m where the format has one)."""
    info = xsil.format_info(fmt)
    nb = cols // info["block_size"]
    b = rng.integers(0, 256, (rows * nb, info["type_size"]), dtype=np.uint8)
    scales = (rng.standard_normal((rows * nb, 2)) * 0.05).astype(np.float16).view(np.uint8)
    if fmt == "Q6_K":
        b[:, 208:210] = scales[:, :2]  # d is last
        return b.reshape(rows, -1)
    b[:, :2] = scales[:, :2]
    if fmt in ("Q4_K", "Q5_K", "Q4_1", "Q5_1"):
        b[:, 2:4] = scales[:, 2:4]
    return b.reshape(rows, -1)


# --- versions and exports ------------------------------------------------------------------------


def test_versions(lib):
    assert ffi.string(lib.xsil_version()).decode() == xsil.__version__
    m = re.search(r"#define XSIL_ABI_VERSION (\d+)", header_text())
    assert m and lib.xsil_abi_version() == int(m.group(1)) == 1
    assert f'#define XSIL_VERSION "{xsil.__version__}"' in header_text()


def test_every_declared_function_is_exported_and_in_cdef(lib):
    names = re.findall(r"XSIL_API\s+[\w\s\*]+?\b(xsil_\w+)\s*\(", header_text())
    assert len(names) >= 20
    for n in names:
        assert getattr(lib, n) is not None
        assert n + "(" in CDEF, f"{n} missing from the test's cdef"


def test_status_names(lib):
    assert ffi.string(lib.xsil_status_name(OK)) == b"XSIL_OK"
    assert ffi.string(lib.xsil_status_name(BAD_TIER)) == b"XSIL_ERR_TIER"
    assert ffi.string(lib.xsil_status_name(123)) == b"XSIL_ERR_UNKNOWN_STATUS"


# --- formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["Q4_0", "Q8_0", "Q4_K"])
def test_format_info(lib, fmt):
    info = xsil.format_info(fmt)
    assert info["ggml_type"] == FMT_ID[fmt]
    assert lib.xsil_format_block_size(FMT_ID[fmt]) == info["block_size"]
    assert lib.xsil_format_type_size(FMT_ID[fmt]) == info["type_size"]
    assert ffi.string(lib.xsil_format_name(FMT_ID[fmt])).decode() == fmt
    row_bytes = 4 * 256 // info["block_size"] * info["type_size"]
    assert lib.xsil_format_row_bytes(FMT_ID[fmt], 4 * 256) == row_bytes


def test_unknown_format(lib):
    assert lib.xsil_format_block_size(10) == -1
    assert err(lib) == "[format] unsupported format id 10; expected one of Q4_0 (2), Q4_1 (3), Q5_0 (6), Q5_1 (7), Q8_0 (8), Q4_K (12), Q5_K (13), Q6_K (14)"
    assert lib.xsil_format_type_size(0) == -1
    assert lib.xsil_format_name(1) == ffi.NULL
    assert lib.xsil_format_row_bytes(2, 100) == -1
    assert err(lib) == "[row_bytes] cols=100 is not a positive multiple of the Q4_0 block size 32"
    assert lib.xsil_format_block_size(2) == 32 and err(lib) == ""  # success resets the message


# --- cpu: tiers and threads ----------------------------------------------------------------------


def test_tiers_match_python(lib):
    info = xsil.cpu_info()
    n = lib.xsil_cpu_tier_count()
    assert n == len(info["tiers"])
    for i, t in enumerate(info["tiers"]):
        assert ffi.string(lib.xsil_cpu_tier_name(i)).decode() == t["name"]
        assert lib.xsil_cpu_tier_available(i) == int(t["available"])
        assert ffi.string(lib.xsil_cpu_tier_reason(i)).decode() == t["reason"]
    assert ffi.string(lib.xsil_cpu_arch()).decode() == info["arch"]
    assert ffi.string(lib.xsil_cpu_get_tier()).decode() == info["available_tiers"][-1]
    assert lib.xsil_cpu_tier_name(n) == ffi.NULL
    assert err(lib) == f"[cpu] tier index {n} is out of range [0, {n})"
    assert lib.xsil_cpu_tier_available(-1) == -1
    assert lib.xsil_cpu_tier_reason(n) == ffi.NULL


def test_set_tier(lib):
    best = ffi.string(lib.xsil_cpu_get_tier()).decode()
    py_before = xsil.cpu_info()["tier"]
    try:
        assert lib.xsil_cpu_set_tier(b"ref") == OK
        assert ffi.string(lib.xsil_cpu_get_tier()) == b"ref"
        assert xsil.cpu_info()["tier"] == py_before  # libxsil's default is its own
        assert lib.xsil_cpu_set_tier(ffi.NULL) == OK
        assert ffi.string(lib.xsil_cpu_get_tier()).decode() == best
        assert lib.xsil_cpu_set_tier(b"ref") == OK
        assert lib.xsil_cpu_set_tier(b"auto") == OK
        assert ffi.string(lib.xsil_cpu_get_tier()).decode() == best
    finally:
        lib.xsil_cpu_set_tier(ffi.NULL)


def test_bad_tier_same_message_as_python(lib):
    assert lib.xsil_cpu_set_tier(b"sse9") == BAD_TIER
    with pytest.raises(ValueError) as e:
        xsil.set_isa("sse9")
    assert err(lib) == str(e.value)
    assert err(lib).startswith("[cpu] unknown ISA tier 'sse9'; tiers in this build: ref")
    for t in xsil.cpu_info()["tiers"]:
        if not t["available"]:
            assert lib.xsil_cpu_set_tier(t["name"].encode()) == BAD_TIER
            assert "is not supported by this CPU" in err(lib)


def test_threads(lib):
    n0 = lib.xsil_get_num_threads()
    assert n0 >= 1
    try:
        assert lib.xsil_set_num_threads(3) == OK
        assert lib.xsil_get_num_threads() == 3
        for bad in (0, -1, 1025):
            assert lib.xsil_set_num_threads(bad) == INVALID
            assert err(lib) == f"[threads] threads={bad} is out of range [1, 1024]"
        assert lib.xsil_get_num_threads() == 3
    finally:
        assert lib.xsil_set_num_threads(n0) == OK


def test_last_error_is_thread_local(lib):
    assert lib.xsil_set_num_threads(0) == INVALID
    seen = []
    t = threading.Thread(target=lambda: seen.append(err(lib)))
    t.start()
    t.join()
    assert seen == [""]
    assert "threads=0" in err(lib)


# --- results: bit-identical to the Python binding ------------------------------------------------


@pytest.mark.parametrize("fmt", ["Q4_0", "Q8_0"])
@pytest.mark.parametrize("shape", [(1, 32), (7, 96), (33, 256)])
def test_quantize_matches_binding(lib, rng, fmt, shape):
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 10, (shape[0], 1))).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block
    if shape[0] > 1:
        x[1, :32] *= np.float32(1e-40)  # a block whose scale underflows
    ref = xsil.quantize(x, fmt)
    for threads in (0, 1, 2):
        assert np.array_equal(c_quantize(lib, x, fmt, threads), ref)


@pytest.mark.parametrize("fmt", list(FMT_ID))
def test_dequantize_matches_binding(lib, rng, fmt):
    cols = 512
    b = random_blocks(rng, fmt, 9, cols)
    ref = xsil.dequantize(b, fmt, cols)
    for threads in (0, 1, 2):
        assert np.array_equal(bits(c_dequantize(lib, b, fmt, cols, threads)), bits(ref))


@pytest.mark.parametrize("fmt", list(FMT_ID))
@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("mnk", [(1, 17, 256), (5, 64, 512), (70, 33, 256)])
def test_matmul_matches_binding(lib, rng, tier, fmt, exact, mnk):
    M, N, K = mnk
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = random_blocks(rng, fmt, N, K)
    ref = xsil.matmul(x, w, fmt, isa=tier, exact=exact)
    for threads in (0, 1, 2):
        y = c_matmul(lib, x, w, fmt, threads=threads, tier=tier, exact=exact)
        assert np.array_equal(bits(y), bits(ref)), (tier, threads)


def test_matmul_default_tier(lib, rng):
    x = rng.standard_normal((2, 64)).astype(np.float32)
    w = xsil.quantize(rng.standard_normal((8, 64)).astype(np.float32), "Q4_0")
    assert np.array_equal(bits(c_matmul(lib, x, w, "Q4_0")), bits(xsil.matmul(x, w, "Q4_0")))


# --- validation: every size checked before memory is touched -------------------------------------


def call_matmul(lib, x, M, K, w, w_bytes, N, fmt, y, y_floats, threads=0, tier=None, exact=0):
    t = ffi.NULL if tier is None else tier.encode()
    xp = ffi.NULL if x is None else fptr(x)
    wp = ffi.NULL if w is None else vptr(w)
    yp = ffi.NULL if y is None else fptr(y)
    return lib.xsil_matmul(xp, M, K, wp, w_bytes, N, fmt, yp, y_floats, threads, t, exact)


@pytest.fixture
def mm(rng):
    x = rng.standard_normal((2, 64)).astype(np.float32)
    w = xsil.quantize(rng.standard_normal((4, 64)).astype(np.float32), "Q4_0")  # 4 x 36 bytes
    y = np.full((2, 4), 7.0, np.float32)
    return x, w, y


MATMUL_ERRORS = [
    # (kwargs overriding the good call, status, message)
    (dict(K=100), INVALID, "[matmul] K=100 is not a multiple of the Q4_0 block size 32"),
    (dict(fmt=12), INVALID, "[matmul] K=64 is not a multiple of the Q4_K block size 256"),
    (dict(fmt=5), BAD_FMT, "[matmul] unsupported format id 5; expected one of Q4_0 (2), Q4_1 (3), Q5_0 (6), Q5_1 (7), Q8_0 (8), Q4_K (12), Q5_K (13), Q6_K (14)"),
    (dict(M=0), INVALID, "[matmul] M=0 must be >= 1"),
    (dict(N=-3), INVALID, "[matmul] N=-3 must be >= 1"),
    (dict(K=0), INVALID, "[matmul] K=0 must be >= 1"),
    (dict(w_bytes=143), INVALID, "[matmul] weight buffer has 143 bytes; N=4 rows of K=64 in Q4_0 need 144"),
    (dict(N=5), INVALID, "[matmul] weight buffer has 144 bytes; N=5 rows of K=64 in Q4_0 need 180"),
    (dict(y_floats=7), INVALID, "[matmul] y has room for 7 floats; M=2 x N=4 need 8"),
    (dict(threads=-1), INVALID, "[matmul] threads=-1 is out of range [1, 1024]"),
    (dict(threads=5000), INVALID, "[matmul] threads=5000 is out of range [1, 1024]"),
    (dict(x=None), INVALID, "[matmul] null input buffer"),
    (dict(w=None), INVALID, "[matmul] null input buffer"),
    (dict(y=None), INVALID, "[matmul] y is NULL"),
    (dict(tier="sse9"), BAD_TIER, "[cpu] unknown ISA tier 'sse9'"),
    (dict(M=2**62), INVALID, "[matmul] M=4611686018427387904 x K=64 overflows"),
    (dict(N=2**60, w_bytes=2**63 - 1), INVALID, "[matmul] N=1152921504606846976 is too large"),
]


@pytest.mark.parametrize("override,status,message", MATMUL_ERRORS)
def test_matmul_errors(lib, mm, override, status, message):
    x, w, y = mm
    args = dict(x=x, M=2, K=64, w=w, w_bytes=w.nbytes, N=4, fmt=2, y=y, y_floats=y.size)
    args.update(override)
    assert call_matmul(lib, **args) == status
    assert err(lib).startswith(message), err(lib)
    assert np.all(y == 7.0)  # nothing written


def test_matmul_messages_shared_with_binding(lib, mm):
    x, w, y = mm
    x100 = np.zeros((2, 100), np.float32)
    with pytest.raises(ValueError) as e:
        xsil.matmul(x100, w, "Q4_0")
    assert call_matmul(lib, x100, 2, 100, w, w.nbytes, 4, 2, y, y.size) == INVALID
    assert err(lib) == str(e.value)
    with pytest.raises(ValueError) as e:
        xsil.matmul(x, w, "Q4_0", threads=5000)
    assert call_matmul(lib, x, 2, 64, w, w.nbytes, 4, 2, y, y.size, threads=5000) == INVALID
    assert err(lib) == str(e.value)
    with pytest.raises(ValueError) as e:
        xsil.matmul(x, w, "Q4_0", isa="sse9")
    assert call_matmul(lib, x, 2, 64, w, w.nbytes, 4, 2, y, y.size, tier="sse9") == BAD_TIER
    assert err(lib) == str(e.value)


def test_quantize_errors(lib):
    x = np.ones((3, 64), np.float32)
    out = np.full(3 * 36, 0xAB, np.uint8)

    def q(fmt=2, rows=3, cols=64, nbytes=out.nbytes, threads=0, xp=None, op=None):
        xp = fptr(x) if xp is None else xp
        op = vptr(out) if op is None else op
        return lib.xsil_quantize(fmt, xp, rows, cols, op, nbytes, threads)

    assert q(fmt=12) == BAD_FMT
    assert err(lib) == "[quantize] unsupported format id 12; expected one of Q4_0 (2), Q4_1 (3), Q5_0 (6), Q5_1 (7), Q8_0 (8)"
    assert q(fmt=14) == BAD_FMT
    assert q(cols=48) == INVALID
    with pytest.raises(ValueError) as e:
        xsil.quantize(np.ones((3, 48), np.float32), "Q4_0")
    assert err(lib) == str(e.value) == "[quantize] cols=48 is not a multiple of the Q4_0 block size 32"
    assert q(cols=-32) == INVALID
    assert err(lib) == "[quantize] cols=-32 is not a non-negative multiple of the Q4_0 block size 32"
    assert q(rows=-1) == INVALID and err(lib) == "[quantize] rows=-1 must be >= 0"
    assert q(nbytes=out.nbytes - 1) == INVALID
    assert err(lib) == "[quantize] out has 107 bytes; rows=3 of cols=64 in Q4_0 need 108"
    assert q(rows=2**62) == INVALID and "overflow" in err(lib)
    assert q(threads=2000) == INVALID and err(lib) == "[quantize] threads=2000 is out of range [1, 1024]"
    assert q(xp=ffi.NULL) == INVALID and err(lib) == "[quantize] x is NULL"
    assert q(op=ffi.NULL) == INVALID and err(lib) == "[quantize] out is NULL"
    x[2, 5] = np.inf
    assert q() == INVALID
    with pytest.raises(ValueError) as e:
        xsil.quantize(x, "Q4_0")
    assert err(lib) == str(e.value)
    assert "non-finite value at flat index 133" in err(lib)
    assert np.all(out == 0xAB)
    x[2, 5] = 1.0
    assert q() == OK and err(lib) == ""
    # A larger output buffer is fine (capacity); only the needed bytes are written.
    big = np.full(3 * 36 + 10, 0xAB, np.uint8)
    assert q(op=vptr(big), nbytes=big.nbytes) == OK
    assert np.array_equal(big[:108], out) and np.all(big[108:] == 0xAB)


def test_dequantize_errors(lib, rng):
    b = random_blocks(rng, "Q4_K", 2, 256)
    out = np.full((2, 256), 7.0, np.float32)

    def d(fmt=12, nbytes=b.nbytes, rows=2, cols=256, floats=out.size, bp=None, op=None):
        bp = vptr(b) if bp is None else bp
        op = fptr(out) if op is None else op
        return lib.xsil_dequantize(fmt, bp, nbytes, rows, cols, op, floats, 0)

    assert d(fmt=11) == BAD_FMT
    assert err(lib) == "[dequantize] unsupported format id 11; expected one of Q4_0 (2), Q4_1 (3), Q5_0 (6), Q5_1 (7), Q8_0 (8), Q4_K (12), Q5_K (13), Q6_K (14)"
    assert d(cols=0) == INVALID
    with pytest.raises(ValueError) as e:
        xsil.dequantize(b, "Q4_K", 0)
    msg = "[dequantize] cols=0 is not a positive multiple of the Q4_K block size 256"
    assert err(lib) == str(e.value) == msg
    assert d(nbytes=b.nbytes + 1) == INVALID
    assert err(lib) == "[dequantize] blocks have 289 bytes; rows=2 of cols=256 in Q4_K need 288"
    assert d(rows=3) == INVALID and "need 432" in err(lib)
    assert d(floats=511) == INVALID
    assert err(lib) == "[dequantize] out has room for 511 floats; rows=2 x cols=256 need 512"
    assert d(rows=-2) == INVALID and err(lib) == "[dequantize] rows=-2 must be >= 0"
    assert d(rows=2**60) == INVALID and "overflow" in err(lib)
    assert d(bp=ffi.NULL) == INVALID and err(lib) == "[dequantize] blocks is NULL"
    assert d(op=ffi.NULL) == INVALID and err(lib) == "[dequantize] out is NULL"
    assert np.all(out == 7.0)
    assert d() == OK


# --- a C program against the installed header and library ----------------------------------------


def _compiler(*names):
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    return None


@pytest.mark.skipif(sys.platform == "win32", reason="the smoke build uses a Unix compiler command line")
def test_c_program(tmp_path):
    cc = _compiler("cc", "gcc", "clang")
    if cc is None:
        pytest.skip("no C compiler")
    src = __file__.replace("test_capi.py", "smoke.c")
    lib_path = xsil.capi_library_path()
    exe = tmp_path / "smoke"
    cmd = [cc, "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", src, "-o", str(exe),
           f"-I{xsil.capi_include_dir()}", str(lib_path), f"-Wl,-rpath,{lib_path.parent}", "-lm"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith("ok")
    assert f"xsil {xsil.__version__} (ABI 1)" in r.stdout


def test_header_compiles_as_cpp(tmp_path):
    cxx = _compiler("c++", "g++", "clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "h.cpp"
    src.write_text(
        "#include <xsil/xsil.h>\nint main() { return xsil_abi_version() == XSIL_ABI_VERSION ? 0 : 1; }\n"
    )
    subprocess.run([cxx, "-std=c++11", "-Wall", "-Wextra", "-pedantic", "-Werror", "-fsyntax-only",
                    f"-I{xsil.capi_include_dir()}", str(src)], check=True, capture_output=True, text=True)


def test_concurrent_calls(lib, rng):
    """cffi releases the GIL around C calls: several host threads call libxsil at once; the pool
    serializes their jobs and each gets the single-threaded answer."""
    x = rng.standard_normal((3, 256)).astype(np.float32)
    w = random_blocks(rng, "Q4_K", 40, 256)
    want = bits(xsil.matmul(x, w, "Q4_K"))
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append(np.array_equal(bits(c_matmul(lib, x, w, "Q4_K")), want))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 80 and all(results)
