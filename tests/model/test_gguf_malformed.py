"""Malformed GGUF files raise xsil.GGUFError naming the field and offset, in a subprocess that
exits cleanly (no crash, hang or huge allocation)."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from xsil.model.gguf import GGUFFile
from xsil.errors import GGUFError

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "oracle", "tiny.gguf")

LOADER = r"""
import sys, json
import xsil
from xsil.model.llama import LlamaModel
try:
    m = LlamaModel(sys.argv[1], n_ctx=64)
    m.forward([1, 2, 3], m.cache.add_sequence())
    print(json.dumps({"ok": True}))
except xsil.GGUFError as e:
    print(json.dumps({"ok": False, "type": "GGUFError", "msg": str(e)}))
except Exception as e:
    print(json.dumps({"ok": False, "type": type(e).__name__, "msg": str(e)}))
"""


def load_in_subprocess(path):
    r = subprocess.run([sys.executable, "-c", LOADER, path], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, XSIL_NUM_THREADS="1"))
    assert r.returncode == 0, f"loader crashed (rc={r.returncode}): {r.stderr[-2000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def good():
    with open(DATA, "rb") as f:
        return f.read()


def header_layout(data):
    """Offsets of the first tensor info fields, by parsing with xsil's reader."""
    g = GGUFFile(DATA)
    t = g.tensors["token_embd.weight"]
    return g, t


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def expect_gguf_error(path, *words):
    res = load_in_subprocess(path)
    assert res["ok"] is False and res["type"] == "GGUFError", res
    for w in words:
        assert w in res["msg"], (w, res["msg"])


def test_good_file_loads(tmp_path, good):
    assert load_in_subprocess(write(tmp_path, "good.gguf", good))["ok"]


def test_empty_and_tiny(tmp_path):
    expect_gguf_error(write(tmp_path, "empty.gguf", b""), "too small")
    expect_gguf_error(write(tmp_path, "tiny.gguf", b"GGUF\x03\x00"), "too small")


def test_bad_magic(tmp_path, good):
    expect_gguf_error(write(tmp_path, "m.gguf", b"GGML" + good[4:]), "bad magic", "offset 0")


@pytest.mark.parametrize("version", [0, 1, 4, 0xFFFFFFFF])
def test_bad_version(tmp_path, good, version):
    expect_gguf_error(write(tmp_path, "v.gguf", good[:4] + struct.pack("<I", version) + good[8:]),
                      "unsupported GGUF version")


@pytest.mark.parametrize("cut", [30, 200, 1000, 20000, 49000, 60000, 2000000])
def test_truncated(tmp_path, good, cut):
    expect_gguf_error(write(tmp_path, "t.gguf", good[:cut]))


def test_absurd_counts(tmp_path, good):
    expect_gguf_error(write(tmp_path, "c1.gguf", good[:8] + struct.pack("<Q", 1 << 60) + good[16:]),
                      "tensor_count")
    expect_gguf_error(write(tmp_path, "c2.gguf", good[:16] + struct.pack("<Q", 1 << 60) + good[24:]),
                      "metadata_kv_count")


def test_absurd_string_length(tmp_path, good):
    # first key's length field sits at offset 24
    expect_gguf_error(write(tmp_path, "s.gguf", good[:24] + struct.pack("<Q", 1 << 50) + good[32:]), "string")


def _tensor_info_offset(good, name=b"token_embd.weight"):
    i = good.index(struct.pack("<Q", len(name)) + name)
    return i + 8 + len(name)  # -> n_dims


def test_bad_n_dims(tmp_path, good):
    o = _tensor_info_offset(good)
    expect_gguf_error(write(tmp_path, "d.gguf", good[:o] + struct.pack("<I", 9) + good[o + 4:]), "n_dims")


def test_overflowing_dims(tmp_path, good):
    o = _tensor_info_offset(good) + 4
    bad = good[:o] + struct.pack("<Q", 1 << 62) + good[o + 8:]
    expect_gguf_error(write(tmp_path, "o.gguf", bad), "token_embd.weight")
    bad = good[:o + 8] + struct.pack("<Q", (1 << 39) - 1) + good[o + 16:]  # huge element count
    expect_gguf_error(write(tmp_path, "o2.gguf", bad), "token_embd.weight")


def test_unknown_tensor_type(tmp_path, good):
    o = _tensor_info_offset(good) + 4 + 16
    expect_gguf_error(write(tmp_path, "ty.gguf", good[:o] + struct.pack("<I", 200) + good[o + 4:]), "ggml type")


def test_unsupported_tensor_type(tmp_path, good):
    # Q4_0 -> Q5_0 (same 32-element blocks, 22 bytes): readable, but xsil cannot run it
    o = _tensor_info_offset(good) + 4 + 16
    res = load_in_subprocess(write(tmp_path, "q5.gguf", good[:o] + struct.pack("<I", 6) + good[o + 4:]))
    assert res["type"] == "GGUFError" and ("Q5_0" in res["msg"] or "overlap" in res["msg"]), res


def test_offset_beyond_file(tmp_path, good):
    o = _tensor_info_offset(good) + 4 + 16 + 4
    expect_gguf_error(write(tmp_path, "off.gguf", good[:o] + struct.pack("<Q", 1 << 40) + good[o + 8:]),
                      "beyond the end")


def test_misaligned_offset(tmp_path, good):
    o = _tensor_info_offset(good) + 4 + 16 + 4
    (cur,) = struct.unpack_from("<Q", good, o)
    expect_gguf_error(write(tmp_path, "al.gguf", good[:o] + struct.pack("<Q", cur + 3) + good[o + 8:]), "aligned")


def test_overlapping_tensors(tmp_path, good):
    o = _tensor_info_offset(good, b"blk.0.attn_q.weight") + 4 + 16 + 4
    expect_gguf_error(write(tmp_path, "ov.gguf", good[:o] + struct.pack("<Q", 0) + good[o + 8:]), "overlap")


def test_unknown_value_type(tmp_path, good):
    # first KV: key string at 24, then its type u32
    (klen,) = struct.unpack_from("<Q", good, 24)
    o = 24 + 8 + klen
    expect_gguf_error(write(tmp_path, "vt.gguf", good[:o] + struct.pack("<I", 77) + good[o + 4:]), "value type")


def test_wrong_metadata_type(tmp_path):
    gguf = pytest.importorskip("gguf")
    from gguf_cases import write_model

    p = str(tmp_path / "wt.gguf")
    write_model(p)
    data = open(p, "rb").read()
    key = b"llama.block_count"
    i = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    # uint32 -> float32 with the same 4 bytes
    bad = data[:i] + struct.pack("<I", 6) + data[i + 4:]
    expect_gguf_error(write(tmp_path, "wt2.gguf", bad), "llama.block_count")


def test_missing_tensor(tmp_path, good):
    name = b"blk.1.ffn_up.weight"
    bad = good.replace(struct.pack("<Q", len(name)) + name, struct.pack("<Q", len(name)) + b"blk.1.ffn_XX.weight")
    expect_gguf_error(write(tmp_path, "mt.gguf", bad), "ffn_up")


def test_unsupported_architecture(tmp_path, good):
    bad = good.replace(b"\x05\x00\x00\x00\x00\x00\x00\x00llama", b"\x05\x00\x00\x00\x00\x00\x00\x00gpt2x", 1)
    expect_gguf_error(write(tmp_path, "arch.gguf", bad), "unsupported architecture")


def test_random_corruption_never_crashes(tmp_path, good):
    """Flip bytes in the header/metadata/tensor-info region: every outcome is a clean load or a
    GGUFError, never a crash."""
    rng = np.random.default_rng(0)
    header_end = GGUFFile(DATA).data_offset
    paths = []
    for i in range(12):
        b = bytearray(good)
        for _ in range(4):
            j = int(rng.integers(4, header_end))
            b[j] = int(rng.integers(0, 256))
        paths.append(write(tmp_path, f"r{i}.gguf", bytes(b)))
    code = LOADER.replace("sys.argv[1]", "p").replace("try:", "for p in sys.argv[1:]:\n  try:", 1)
    # run all corrupted files in one subprocess to keep the test fast
    script = r"""
import sys, json, xsil
from xsil.model.llama import LlamaModel
for p in sys.argv[1:]:
    try:
        m = LlamaModel(p, n_ctx=64); m.forward([1, 2], m.cache.add_sequence()); print("ok")
    except xsil.GGUFError as e:
        print("GGUFError")
    except (ValueError, UnicodeDecodeError) as e:
        print("other", type(e).__name__, e)
"""
    r = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    outs = r.stdout.strip().splitlines()
    assert len(outs) == len(paths)
    assert all(o in ("ok", "GGUFError") for o in outs), outs


def test_reader_api_errors(tmp_path):
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFFile(str(tmp_path / "nope.gguf"))
