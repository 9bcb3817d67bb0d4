# Source lists. An op is one file in src/ plus one entry in src/register.cc's op table; its inner
# loops go in src/cpu/<name>_{ref,avx2,avx512vnni,amx}.cc, each list below compiled with its own ISA
# flags (an op with no AMX file runs its AVX-512 VNNI loops on the AMX path).
set(BITNET_OP_SOURCES
  src/register.cc
  src/bitlinear.cc
  src/ternary_weights.cc
  src/lowbit_matmul.cc
  src/dequantize_lowbit.cc
  src/quantize_lowbit.cc
  src/int_weights.cc
  src/cpu/features.cc)
set(BITNET_REF_SOURCES
  src/cpu/ternary_ref.cc
  src/cpu/int_ref.cc)
set(BITNET_AVX2_SOURCES
  src/cpu/ternary_avx2.cc
  src/cpu/int_avx2.cc)
set(BITNET_AVX512VNNI_SOURCES
  src/cpu/ternary_avx512vnni.cc
  src/cpu/int_avx512vnni.cc)
set(BITNET_AMX_SOURCES
  src/cpu/ternary_amx.cc)

set(BITNET_AVX2_FLAGS -mavx2 -mfma -mf16c)
set(BITNET_AVX512VNNI_FLAGS -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512vnni)
set(BITNET_AMX_FLAGS ${BITNET_AVX512VNNI_FLAGS} -mamx-tile -mamx-int8)

include(CheckCXXSourceCompiles)
set(CMAKE_REQUIRED_FLAGS "${BITNET_AVX512VNNI_FLAGS}")
string(REPLACE ";" " " CMAKE_REQUIRED_FLAGS "${CMAKE_REQUIRED_FLAGS}")
check_cxx_source_compiles([=[
#include <immintrin.h>
int main() {
  __m512i a = _mm512_set1_epi8(1);
  a = _mm512_dpbusd_epi32(a, a, a);
  return _mm_cvtsi128_si32(_mm512_castsi512_si128(a));
}]=] BITNET_COMPILER_HAS_AVX512VNNI)
set(CMAKE_REQUIRED_FLAGS "${BITNET_AMX_FLAGS}")
string(REPLACE ";" " " CMAKE_REQUIRED_FLAGS "${CMAKE_REQUIRED_FLAGS}")
check_cxx_source_compiles([=[
#include <immintrin.h>
int main() {
  _tile_zero(0);
  _tile_dpbsud(0, 1, 2);
  _tile_release();
  return 0;
}]=] BITNET_COMPILER_HAS_AMX)
unset(CMAKE_REQUIRED_FLAGS)

set(_bitnet_sources ${BITNET_OP_SOURCES} ${BITNET_REF_SOURCES} ${BITNET_AVX2_SOURCES})
set_source_files_properties(${BITNET_AVX2_SOURCES} PROPERTIES COMPILE_OPTIONS "${BITNET_AVX2_FLAGS}")
if(BITNET_COMPILER_HAS_AVX512VNNI)
  list(APPEND _bitnet_sources ${BITNET_AVX512VNNI_SOURCES})
  set_source_files_properties(${BITNET_AVX512VNNI_SOURCES} PROPERTIES COMPILE_OPTIONS "${BITNET_AVX512VNNI_FLAGS}")
else()
  message(WARNING "The compiler cannot build AVX-512 VNNI code; the library will have the ref and avx2 paths only.")
endif()
if(BITNET_COMPILER_HAS_AVX512VNNI AND BITNET_COMPILER_HAS_AMX)
  list(APPEND _bitnet_sources ${BITNET_AMX_SOURCES})
  set_source_files_properties(${BITNET_AMX_SOURCES} PROPERTIES COMPILE_OPTIONS "${BITNET_AMX_FLAGS}")
  set(BITNET_HAVE_AMX ON)
else()
  message(WARNING "The compiler or assembler cannot build AMX code; the library will have no amx path.")
endif()

add_library(bitnet_ops SHARED ${_bitnet_sources})
target_include_directories(bitnet_ops PRIVATE "${ORT_INCLUDE_DIR}" include src)
# ORT_API_MANUAL_INIT: the ORT C++ API is initialized from RegisterCustomOps' OrtApiBase, not by
# linking libonnxruntime. -ffp-contract=off: no FMA contraction, so every ISA path rounds alike.
target_compile_definitions(bitnet_ops PRIVATE ORT_API_MANUAL_INIT
                           $<$<BOOL:${BITNET_COMPILER_HAS_AVX512VNNI}>:BITNET_HAVE_AVX512VNNI>
                           $<$<BOOL:${BITNET_HAVE_AMX}>:BITNET_HAVE_AMX>)
# -Wno-maybe-uninitialized: GCC 12 misreads the intrinsics headers' self-initialized "undefined" vectors.
target_compile_options(bitnet_ops PRIVATE -O3 -Wall -Wextra -Wno-maybe-uninitialized -ffp-contract=off)
target_link_options(bitnet_ops PRIVATE "-Wl,--version-script=${CMAKE_CURRENT_SOURCE_DIR}/exports.map" -Wl,--no-undefined)
if(BITNET_SANITIZE)
  target_compile_options(bitnet_ops PRIVATE -fsanitize=address,undefined -fno-omit-frame-pointer
                         -fno-sanitize-recover=undefined)
  target_link_options(bitnet_ops PRIVATE -fsanitize=address,undefined)
endif()
install(TARGETS bitnet_ops LIBRARY DESTINATION bitnet_onnx/lib)
