import xsil


def test_cpu_info_shape():
    info = xsil.cpu_info()
    assert info["arch"] in ("x86_64", "aarch64", "other")
    assert "ref" in info["available_tiers"]
    assert info["tier"] in info["available_tiers"]
    names = [t["name"] for t in info["tiers"]]
    assert names[0] == "ref"
    for t in info["tiers"]:
        assert t["available"] == (t["name"] in info["available_tiers"])
        assert t["available"] or t["reason"]


def test_default_tier_is_best_available():
    info = xsil.cpu_info()
    assert info["tier"] == info["available_tiers"][-1]


def test_set_isa_roundtrip():
    before = xsil.cpu_info()["tier"]
    try:
        xsil.set_isa("ref")
        assert xsil.cpu_info()["tier"] == "ref"
    finally:
        xsil.set_isa(before)


def test_thread_pool_resize():
    n = xsil.get_num_threads()
    try:
        xsil.set_num_threads(1)
        assert xsil.get_num_threads() == 1
        xsil.set_num_threads(3)
        assert xsil.get_num_threads() == 3
    finally:
        xsil.set_num_threads(n)


def test_import_does_not_load_onnxruntime_or_cuda():
    import subprocess
    import sys

    code = (
        "import sys, xsil; "
        "bad=[m for m in sys.modules "
        "if m.startswith(('onnxruntime','torch','cupy','xsil._cuda'))]; print(bad)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
