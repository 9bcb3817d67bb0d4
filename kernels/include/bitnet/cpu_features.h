// CPU feature detection and the choice of the inner-loop implementation (the "ISA path").
// Detection runs once per process (cpuid plus xgetbv for the register state the OS saves); the
// BITNET_ISA environment variable is read at every kernel creation so a process can switch paths
// between sessions (tests do).
#pragma once

namespace bitnet {

enum class Isa { kRef, kAvx2, kAvx512Vnni, kAmx };

struct CpuFeatures {
  bool avx2 = false;  // AVX2 + FMA + F16C, with YMM state enabled by the OS
  bool avx512vnni = false;  // AVX512F/BW/VL/VNNI, with ZMM state enabled by the OS
  bool amx = false;  // + AMX-TILE/AMX-INT8, tile state enabled by the OS and granted to this process
};

const CpuFeatures& DetectedCpuFeatures();

// "ref", "avx2", "avx512" or "amx": the values BITNET_ISA accepts.
const char* IsaName(Isa isa);

// Whether this CPU runs the path and this build of the library contains it.
bool IsaAvailable(Isa isa);

// The path a kernel created now uses: BITNET_ISA when set, else the fastest available path.
// Throws bitnet::Error naming `op` when BITNET_ISA is unknown or not available here.
Isa SelectIsa(const char* op);

}  // namespace bitnet
