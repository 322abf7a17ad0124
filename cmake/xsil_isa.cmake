# Per-ISA compile flags. A file added with xsil_add_isa_sources(target ISA files...) is compiled with
# exactly that ISA's flags; nothing else in the build sees them, so the library still loads (and
# the dispatcher picks another tier) on a CPU without that ISA.
string(TOLOWER "${CMAKE_SYSTEM_PROCESSOR}" _xsil_proc)
set(XSIL_ARCH_X86 OFF)
set(XSIL_ARCH_ARM64 OFF)
if(_xsil_proc MATCHES "^(x86_64|amd64|x64)$")
  set(XSIL_ARCH_X86 ON)
elseif(_xsil_proc MATCHES "^(aarch64|arm64)$")
  set(XSIL_ARCH_ARM64 ON)
endif()

set(XSIL_ISA_FLAGS_avx2 "-mavx2;-mfma;-mf16c;-mbmi2")
# AVX-512 tier: F/BW/VL/DQ (Skylake-X and later, Zen 4 and later). VNNI code lives in its own files
# (avx512vnni flags) and is put in the avx512 table at run time only where the CPU has AVX512-VNNI.
set(XSIL_ISA_FLAGS_avx512 "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx2;-mfma;-mf16c;-mbmi2")
set(XSIL_ISA_FLAGS_avx512vnni "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512vnni;-mavx2;-mfma;-mf16c;-mbmi2")
set(XSIL_ISA_FLAGS_amx "-mamx-tile;-mamx-int8;-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512vnni;-mavx2;-mfma;-mf16c")
set(XSIL_ISA_FLAGS_neon "")
set(XSIL_ISA_FLAGS_neon_dotprod "-march=armv8.2-a+dotprod")

function(xsil_add_isa_sources target isa)
  set(_flags "${XSIL_ISA_FLAGS_${isa}}")
  foreach(_src ${ARGN})
    target_sources(${target} PRIVATE ${_src})
    if(_flags)
      set_source_files_properties(${_src} PROPERTIES COMPILE_OPTIONS "${_flags}")
    endif()
  endforeach()
endfunction()
