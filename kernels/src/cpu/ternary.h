// Ternary matrix × int8 activations: the kernel-side weight layout and the per-ISA inner loops.
//
// Layout "T16" (what BitLinear repacks W into at kernel creation, 2 bits per weight):
//   output rows are grouped in blocks of 16 (N padded to a multiple of 16), K is cut into packets
//   of 16 (padded to a multiple of 16); one packet of one block is 64 bytes, and the packets of a
//   block follow each other (block b, packet p at byte (b · k_packets + p) · 64). Within a packet,
//   byte 4·j + i (j = row in the block, i ∈ 0..3) holds in bits 2f..2f+1 (f ∈ 0..3) the code
//   c = w + 1 of row 16·b + j at k = 16·p + 4·f + i. Padding holds c = 1 (w = 0).
// So one 512-bit load of a packet, masked to field f, is 16 rows × 4 consecutive k as unsigned
// bytes: exactly the operand layout of VPDPBUSD against a broadcast of 4 activation bytes. The
// kernels compute Σ c·x and subtract Σ x (per token) to get Σ w·x exactly.
#pragma once

#include <cstddef>
#include <cstdint>

#include "bitnet/cpu_features.h"

namespace bitnet::cpu {

inline constexpr int64_t kBlockRows = 16;
inline constexpr int64_t kPacketK = 16;
inline constexpr int64_t kPacketBytes = 64;
// The longest reduction every path accumulates exactly in int32 (the one-row AVX-512 kernel
// sums products scaled by up to 64 in each accumulator: 2^20 / 32 · 4 · 128 · 127 < 2^31).
inline constexpr int64_t kMaxK = int64_t{1} << 20;
// Calls with at most this many X rows stream the packed weights once (memory-bound); calls with
// more are cut into tasks of a few blocks by the op (compute-bound), and run a GEMM on AMX tiles
// on the AMX path. The op plans its tasks with the same threshold.
inline constexpr int64_t kStreamingMaxRows = 16;
// xq as the op lays it out for every path: rows XqRowBytes apart and, in calls of more than
// kStreamingMaxRows rows, kXqPadRows zero rows after the last (the AMX GEMM reads whole 64-k ×
// 32-row tiles).
inline constexpr int64_t kXqRowAlign = 64;
inline constexpr int64_t kXqPadRows = 31;

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A multiple of kXqRowAlign, but not of 4 KB: 16 rows 4 KB apart (an AMX tile) all fall in one L1
// set and evict each other (measured: 5–8 % of BitLinear's M = 128, K = 4096 time on AMX).
inline int64_t XqRowBytes(int64_t k_packets) {
  const int64_t bytes = CeilDiv(k_packets * kPacketK, kXqRowAlign) * kXqRowAlign;
  return bytes % 4096 == 0 ? bytes + kXqRowAlign : bytes;
}

// Repacked weights (read-only view).
struct TernaryMatrix {
  const uint8_t* packets = nullptr;
  int64_t n = 0;          // output rows
  int64_t k = 0;          // reduction length (unpadded)
  int64_t blocks = 0;     // ceil(n / 16)
  int64_t k_packets = 0;  // ceil(k / 16)
};

// One quantized activation row: Y row = ((Σ c·x − sum) · factor) · α + bias, or NaN if !finite.
struct TokenRow {
  float factor = 0.0f;  // s / 127.0f
  int32_t sum = 0;      // Σ xq
  int32_t finite = 1;
};

// One call's operands. xq rows are ldxq ≥ k_packets · 16 bytes apart (see kXqRowAlign), zero beyond K.
struct TernaryProblem {
  TernaryMatrix w;
  const int8_t* xq = nullptr;
  int64_t ldxq = 0;
  const TokenRow* rows = nullptr;
  const float* alpha = nullptr;  // [n], or [1] when !alpha_per_row
  bool alpha_per_row = false;
  const float* bias = nullptr;   // [n] or null
  void* y = nullptr;             // [m, n] float or float16 (uint16_t bits)
  bool y_f16 = false;
};

struct TernaryKernels {
  // Quantizes one row of K floats (or float16 bits) into xq[0, ldxq) and fills *row.
  void (*quantize_f32)(const float* x, int64_t k, int64_t ldxq, int8_t* xq, TokenRow* row);
  void (*quantize_f16)(const uint16_t* x, int64_t k, int64_t ldxq, int8_t* xq, TokenRow* row);
  // Y[m_begin:m_end, 16·block_begin : min(n, 16·block_end)]. Throws only std::bad_alloc (scratch).
  void (*matmul)(const TernaryProblem& p, int64_t m_begin, int64_t m_end, int64_t block_begin,
                 int64_t block_end);
};

extern const TernaryKernels kTernaryRef;
extern const TernaryKernels kTernaryAvx2;
#ifdef BITNET_HAVE_AVX512VNNI
extern const TernaryKernels kTernaryAvx512Vnni;
#endif
#ifdef BITNET_HAVE_AMX
extern const TernaryKernels kTernaryAmx;
#endif

inline const TernaryKernels& TernaryKernelsFor(Isa isa) {
  switch (isa) {
#ifdef BITNET_HAVE_AMX
    case Isa::kAmx: return kTernaryAmx;
#endif
#ifdef BITNET_HAVE_AVX512VNNI
    case Isa::kAvx512Vnni: return kTernaryAvx512Vnni;
#endif
    case Isa::kAvx2: return kTernaryAvx2;
    default: return kTernaryRef;
  }
}

}  // namespace bitnet::cpu
