// AVX-512 helpers shared by the files compiled with AVX-512 flags (internal linkage: each file's
// copy is built with its own flags).
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace bitnet::cpu {
namespace {

inline __mmask16 TailMask(int64_t count) {
  return count >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << count) - 1);
}

// Stores the lanes of `mask` of v at element `at` of Y, float or float16 (round to nearest even).
inline void StoreOutputs(void* y, bool y_f16, int64_t at, __mmask16 mask, __m512 v) {
  if (y_f16) {
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(y) + at, mask,
                             _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    _mm512_mask_storeu_ps(static_cast<float*>(y) + at, mask, v);
  }
}

}  // namespace
}  // namespace bitnet::cpu
