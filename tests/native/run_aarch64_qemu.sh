#!/usr/bin/env bash
# Builds tests/native/{matmul,attention}_tiers_test natively and for aarch64 (cross compiler), and
# runs the aarch64 binaries under qemu-aarch64 with a CPU without dotprod (cortex-a53: tiers ref + neon) and one
# with it (max: ref + neon + neon-dotprod). Each run compares every available tier with ref.
# Exit status: 0 when all runs pass, or when the cross compiler / qemu is missing (skipped, with a
# message); non-zero on any failure.
#   tests/native/run_aarch64_qemu.sh            (build dirs under build/native-*; -j2)
#   XSIL_NATIVE_SKIP_X86=1 ...                  (aarch64 only)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
jobs="${XSIL_NATIVE_JOBS:-2}"
seed="${XSIL_NATIVE_SEED:-1234}"
gen=()
if command -v ninja >/dev/null 2>&1; then gen=(-G Ninja); fi
status=0
t0=$(date +%s)

if ! command -v cmake >/dev/null 2>&1; then
  echo "SKIP: cmake not found"; exit 0
fi

if [ -z "${XSIL_NATIVE_SKIP_X86:-}" ]; then
  echo "== native build ($(uname -m))"
  b="$root/build/native-host"
  cmake -S "$here" -B "$b" ${gen[@]+"${gen[@]}"} -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$b" -j "$jobs" --target matmul_tiers_test attention_tiers_test >/dev/null
  for t in matmul_tiers_test attention_tiers_test; do
    if "$b/$t" "$seed"; then echo "native $t: PASS"; else echo "native $t: FAIL"; status=1; fi
  done
fi

if ! command -v aarch64-linux-gnu-g++ >/dev/null 2>&1; then
  echo "SKIP: aarch64-linux-gnu-g++ not found (apt-get install g++-aarch64-linux-gnu)"; exit $status
fi
if ! command -v qemu-aarch64 >/dev/null 2>&1; then
  echo "SKIP: qemu-aarch64 not found (apt-get install qemu-user)"; exit $status
fi

echo "== aarch64 cross build"
b="$root/build/native-aarch64"
cmake -S "$here" -B "$b" ${gen[@]+"${gen[@]}"} -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$root/cmake/toolchains/aarch64-linux-gnu.cmake" >/dev/null
cmake --build "$b" -j "$jobs" --target matmul_tiers_test attention_tiers_test >/dev/null
# Inline functions that a +dotprod file emits as weak (COMDAT) symbols may be the copy the linker
# keeps for baseline code too, and then run on CPUs without ARMv8.2: list any (a warning only).
if command -v aarch64-linux-gnu-nm >/dev/null 2>&1; then
  for o in $(find "$b" -name '*_neon_dotprod.cpp.o'); do
    weak="$(aarch64-linux-gnu-nm --defined-only "$o" | awk '$2 ~ /^[WVu]$/ {print "  " $3}' || true)"
    if [ -n "$weak" ]; then echo "WARNING: weak symbols in $(basename "$o") (built with +dotprod):"; echo "$weak"; fi
  done
fi
sysroot="${XSIL_AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}"
for cpu in cortex-a53 max; do
  for t in matmul_tiers_test attention_tiers_test; do
    echo "== qemu-aarch64 -cpu $cpu $t"
    if qemu-aarch64 -L "$sysroot" -cpu "$cpu" "$b/$t" "$seed"; then
      echo "qemu $cpu $t: PASS"
    else
      echo "qemu $cpu $t: FAIL"; status=1
    fi
  done
done
echo "== total $(( $(date +%s) - t0 ))s, status $status"
exit $status
