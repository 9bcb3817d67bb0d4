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

// Panel of `nb` blocks × packets [pk0, pk0 + packets): step s = 4·packet + field holds, `stride`
// vectors apart, the nb 64-byte vectors of codes c ∈ {0, 1, 2} (16 rows × 4 k each) of step s.
inline void UnpackPanel(const TernaryMatrix& w, int64_t b0, int nb, int64_t pk0, int64_t packets, int stride,
                        uint8_t* panel) {
  const __m512i low2 = _mm512_set1_epi8(0x03);
  const int64_t field = int64_t{stride} * kPacketBytes;
  for (int j = 0; j < nb; ++j) {
    const uint8_t* src = w.packets + ((b0 + j) * w.k_packets + pk0) * kPacketBytes;
    for (int64_t pk = 0; pk < packets; ++pk) {
      const __m512i v = _mm512_load_si512(src + pk * kPacketBytes);
      uint8_t* dst = panel + (pk * 4 * stride + j) * kPacketBytes;
      _mm512_store_si512(dst, _mm512_and_si512(v, low2));
      _mm512_store_si512(dst + field, _mm512_and_si512(_mm512_srli_epi16(v, 2), low2));
      _mm512_store_si512(dst + 2 * field, _mm512_and_si512(_mm512_srli_epi16(v, 4), low2));
      _mm512_store_si512(dst + 3 * field, _mm512_and_si512(_mm512_srli_epi16(v, 6), low2));
    }
  }
}

}  // namespace
}  // namespace bitnet::cpu
