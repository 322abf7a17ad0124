// TEMPORARY placeholder until the simd branch lands: the avx2/avx512 matmul tables are the ref
// table with the tier field changed, so the x86 tiers (which appear once any x86 ISA file exists)
// link on the kv branch. Drop this file when merging the simd branch.
#include "cpu/q4_matmul.h"

namespace xsil {

const MatmulKernels& matmul_kernels_avx2() {
  static const MatmulKernels k = [] {
    MatmulKernels t = matmul_kernels_ref();
    t.tier = Tier::Avx2;
    return t;
  }();
  return k;
}

const MatmulKernels& matmul_kernels_avx512(bool vnni) {
  static const MatmulKernels k = [] {
    MatmulKernels t = matmul_kernels_ref();
    t.tier = Tier::Avx512;
    return t;
  }();
  return k;
}

}  // namespace xsil
