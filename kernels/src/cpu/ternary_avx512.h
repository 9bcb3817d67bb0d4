// Pieces of the AVX-512 ternary kernels shared by the VNNI path and the AMX path (both files are
// compiled with AVX-512 flags; internal linkage keeps each file's copy built with its own flags).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <limits>

#include "avx512.h"
#include "ternary.h"

namespace bitnet::cpu {
namespace {

// Y[m, n0 : n0 + 16] from the 16 dot products Σ c·x of one block (README epilogue order).
inline void StoreBlock(const TernaryProblem& p, int64_t m, int64_t n0, __m512i dot) {
  const __mmask16 mask = TailMask(p.w.n - n0);
  const TokenRow& row = p.rows[m];
  __m512 v;
  if (!row.finite) {
    v = _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN());
  } else {
    v = _mm512_cvt_roundepi32_ps(_mm512_sub_epi32(dot, _mm512_set1_epi32(row.sum)),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm512_mul_ps(v, _mm512_set1_ps(row.factor));
    v = _mm512_mul_ps(v, p.alpha_per_row ? _mm512_maskz_loadu_ps(mask, p.alpha + n0) : _mm512_set1_ps(p.alpha[0]));
    if (p.bias != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, p.bias + n0));
  }
  StoreOutputs(p.y, p.y_f16, m * p.w.n + n0, mask, v);
}

}  // namespace
}  // namespace bitnet::cpu
