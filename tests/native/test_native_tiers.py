"""Runs the native tier checks (tests/native/run_aarch64_qemu.sh): the x86 tiers natively and the
aarch64 NEON tiers cross-compiled and run under qemu-user, all bit-identical to ref. Skips when the
cross compiler or qemu is missing (CI installs them: see .ci/run)."""

import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(__file__)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
                    reason="needs g++-aarch64-linux-gnu and qemu-user (apt-get install g++-aarch64-linux-gnu qemu-user)")
def test_native_and_neon_tiers_match_ref():
    r = subprocess.run(["bash", os.path.join(HERE, "run_aarch64_qemu.sh")], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "FAIL" not in r.stdout and "qemu max matmul_tiers_test: PASS" in r.stdout
