// AVX-512 tier, VNNI build (vpdpbusd): the same kernels as matmul_avx512.cpp compiled with
// -mavx512vnni. Only reached through matmul_kernels_avx512(true) on CPUs with AVX512-VNNI.
#include "cpu/x86/x86_matmul_avx512.h"

namespace xsil {

const MatmulKernels& matmul_kernels_avx512_vnni_table() {
  static const MatmulKernels k = make_avx512_table();
  return k;
}

}  // namespace xsil
