// Run-time sizes turned into template arguments, written once for every ISA path: a weight bit
// width (8, 4, 2, 1) and a tile's row or block count become std::integral_constant arguments of
// a generic lambda, so each file instantiates its kernels without a switch of its own.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace bitnet::cpu {

template <int N>
using Const = std::integral_constant<int, N>;

// body(Const<bits>{}) for bits ∈ {8, 4, 2, 1} (the op layer has checked it is one of them).
template <typename Body>
inline void WithBits(int bits, Body&& body) {
  switch (bits) {
    case 8: body(Const<8>{}); break;
    case 4: body(Const<4>{}); break;
    case 2: body(Const<2>{}); break;
    default: body(Const<1>{}); break;
  }
}

template <typename Body, int... I>
inline void WithCountOf(int count, Body& body, std::integer_sequence<int, I...>) {
  static_cast<void>(((count == I + 1 ? (body(Const<I + 1>{}), true) : false) || ...));
}

// body(Const<c>{}) for c = min(count, N), count ≥ 1.
template <int N, typename Body>
inline void WithCount(int64_t count, Body&& body) {
  WithCountOf(static_cast<int>(std::min<int64_t>(count, N)), body, std::make_integer_sequence<int, N>{});
}

// Rows [begin, end) in tiles of N rows (the last one shorter): body(m, Const<rows>{}) per tile.
template <int N, typename Body>
inline void ForEachTile(int64_t begin, int64_t end, Body&& body) {
  for (int64_t m = begin; m < end; m += N) {
    WithCount<N>(end - m, [&](auto rows) { body(m, rows); });
  }
}

}  // namespace bitnet::cpu
