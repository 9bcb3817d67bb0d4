// Group-wise integer weights (8, 4, 2, 1 bits) × activations: the kernel-side layout and the
// per-ISA inner loops of LowBitMatMul, plus the dequantization of packed rows at rest
// (DequantizeLowBit).
//
// Layout "I16" (what LowBitMatMul repacks W, scales and zero points into, codes kept at their bit
// width). Output rows are grouped in blocks of 16 (N padded to a multiple of 16). Each group of G
// elements along K becomes GP = ceil(G / P) · P "slots", P = 32 / bits the slots of one packet;
// slot j of group g is k = g·G + j when j < G and k < K, else padding. A block is `groups` group
// records one after the other (block b, group g at byte (b · groups + g) · group_bytes); a record
// is GP / P packets of 64 bytes, then the 16 rows' scales (float32), then, when asymmetric, the 16
// rows' zero points (int32). Within a packet, byte 4·r + i (r = row in the block, i ∈ 0..3) holds
// in bits f·bits .. (f+1)·bits − 1 (f ∈ 0 .. 8/bits − 1) the code u of row 16·b + r at slot
// 4·f + i of the packet. So a 64-byte packet is, per field f, 16 rows × 4 consecutive slots of
// codes: after shift and mask, the operand layout of VPDPBUSD against a broadcast of 4 activation
// bytes, and, per slot, one code per 32-bit lane for a float table lookup (VPERMPS).
//
// Activations are laid out in the same slots (row stride groups · GP), zero in the padding, so
// the padding codes never contribute.
//
// act_quant = 1 (int8 activations), per output row n and group g, exactly:
//   acc_g = Σ_j q_j · xq_j with q = u − zp (bits ≥ 2) or 2u − 1 (bits = 1), in int32
//   (computed as Σ u·xq − zp · Σ xq, or 2 Σ u·xq − Σ xq; int32 wrap-around cancels),
//   y = y + float(acc_g) · s_g over the groups in order, then y · (s_x / 127) + bias.
// act_quant = 0 (float activations), the order every path follows (so all paths agree bit for
// bit): per row and group, four float32 partial sums p_{j mod 4} = fma(float(q_j), x_j, p) over
// the group's slots j in order, total = (p_0 + p_1) + (p_2 + p_3), y = fma(total, s_g, y) over
// the groups in order, then y + bias.
#pragma once

#include <cstddef>
#include <cstdint>

#include "bitnet/cpu_features.h"
#include "ternary.h"

namespace bitnet::cpu {

// Packet geometry shared with ternary.h: kBlockRows rows, kPacketBytes bytes.
inline constexpr int64_t PacketSlots(int bits) { return 32 / bits; }
inline constexpr int Fields(int bits) { return 8 / bits; }

// act_quant = 1 needs every |acc_g| and per-field partial sum to fit in int32:
// (2^bits − 1) · 127 · G < 2^31 for bits = 8 is the binding case.
inline constexpr int64_t kMaxInt8GroupSize = 65536;

// Repacked weights (read-only view).
struct IntMatrix {
  const uint8_t* data = nullptr;
  int64_t n = 0;              // output rows
  int64_t k = 0;              // reduction length (unpadded)
  int bits = 4;
  int64_t group_size = 0;     // G
  int64_t groups = 0;         // ceil(k / G)
  int64_t group_slots = 0;    // GP = ceil(G / P) · P
  int64_t group_packets = 0;  // GP / P
  int64_t group_bytes = 0;    // one group record: packets, scales, zero points
  int64_t blocks = 0;         // ceil(n / 16)
  bool asymmetric = false;    // zero points per row and group (else the symmetric one)

  int64_t block_bytes() const { return groups * group_bytes; }
  int64_t scales_offset() const { return group_packets * kPacketBytes; }
  int64_t zero_points_offset() const { return scales_offset() + kBlockRows * 4; }
  // The implicit zero point of symmetric codes (1 for bits = 1, where q = 2u − 1).
  int symmetric_zero_point() const { return bits == 1 ? 1 : 1 << (bits - 1); }
  // Activation slots per row: groups · GP.
  int64_t slots() const { return groups * group_slots; }
};

// One call's operands. Activation rows are w.slots() apart.
struct IntProblem {
  IntMatrix w;
  const int8_t* xq = nullptr;     // act_quant = 1: int8 activations in slots
  const int32_t* xsum = nullptr;  // act_quant = 1: Σ xq per row and group, [m, groups]
  const float* xf = nullptr;      // act_quant = 0: float activations in slots
  const TokenRow* rows = nullptr;  // finite flag (and, act_quant = 1, factor s/127) per row
  const float* bias = nullptr;    // [n] or null
  void* y = nullptr;              // [m, n] float or float16 (uint16_t bits)
  bool y_f16 = false;
};

// One packed row at rest (kernels/README.md integer encoding, or ternary "2bit" as 2-bit codes
// with zero point 1) dequantized: w = float(mult · u − zp_g) · s_g.
struct PackedRow {
  const uint8_t* codes = nullptr;
  int64_t k = 0;
  int bits = 4;
  int64_t group_size = 0;
  const float* scales = nullptr;         // one per group
  const uint8_t* zero_points = nullptr;  // one per group, or null: `zero_point` for every group
  int zero_point = 0;
  int mult = 1;                          // 2 for 1-bit integer codes (q = 2u − 1)
};

// Code u of element i of a packed row at rest (element i at bits i·bits, least significant first).
inline int CodeAt(const uint8_t* row, int64_t i, int bits) {
  const int64_t bit = i * bits;
  return (row[bit >> 3] >> (bit & 7)) & ((1 << bits) - 1);
}

struct IntKernels {
  // Y[m_begin:m_end, 16·block_begin : min(n, 16·block_end)]. Never throw.
  void (*matmul_int8)(const IntProblem& p, int64_t m_begin, int64_t m_end, int64_t block_begin,
                      int64_t block_end);
  void (*matmul_float)(const IntProblem& p, int64_t m_begin, int64_t m_end, int64_t block_begin,
                       int64_t block_end);
  // row.k floats (or float16 bits when f16) into out.
  void (*dequantize)(const PackedRow& row, void* out, bool f16);
};

// Calls with at most this many X rows stream the weights once (memory-bound); more rows are
// tiled over blocks that stay in cache. The op plans its tasks with the same threshold.
inline constexpr int64_t kIntStreamingMaxRows = 4;

extern const IntKernels kIntRef;
extern const IntKernels kIntAvx2;
#ifdef BITNET_HAVE_AVX512VNNI
extern const IntKernels kIntAvx512Vnni;
#endif

// The AMX path runs these ops on its AVX-512 VNNI kernels (AMX serves BitLinear's GEMM only).
inline const IntKernels& IntKernelsFor(Isa isa) {
  switch (isa) {
#ifdef BITNET_HAVE_AVX512VNNI
    case Isa::kAmx:
    case Isa::kAvx512Vnni: return kIntAvx512Vnni;
#endif
    case Isa::kAvx2: return kIntAvx2;
    default: return kIntRef;
  }
}

}  // namespace bitnet::cpu
