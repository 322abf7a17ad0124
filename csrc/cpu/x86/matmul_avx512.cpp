// AVX-512 (F/BW/VL/DQ) matmul tier without VNNI, and the tier's entry point: the VNNI build of the
// same kernels (matmul_avx512vnni.cpp) is chosen at run time where the CPU has AVX512-VNNI.
// XSIL_AVX512_NO_VNNI=1 in the environment forces the non-VNNI table (for testing it on VNNI CPUs).
#include <cstdlib>

#include "cpu/x86/x86_matmul_avx512.h"

namespace xsil {

const MatmulKernels& matmul_kernels_avx512_vnni_table();  // matmul_avx512vnni.cpp

const MatmulKernels& matmul_kernels_avx512(bool vnni) {
  static const MatmulKernels k = make_avx512_table();
  static const bool no_vnni = [] {
    const char* e = std::getenv("XSIL_AVX512_NO_VNNI");
    return e && *e && *e != '0';
  }();
  return vnni && !no_vnni ? matmul_kernels_avx512_vnni_table() : k;
}

}  // namespace xsil
