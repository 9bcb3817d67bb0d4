// cpuid/xgetbv detection and the BITNET_ISA override (see bitnet/cpu_features.h).
#include "bitnet/cpu_features.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "bitnet/error.h"

namespace bitnet {
namespace {

uint64_t ReadXcr0() {
  uint32_t lo = 0, hi = 0;
  // xgetbv with ecx = 0, spelled as bytes so the file needs no -mxsave.
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

// Linux hands out AMX tile state only to processes that ask (arch_prctl ARCH_REQ_XCOMP_PERM for
// XFEATURE_XTILEDATA); a tile instruction without it is SIGILL. The grant is per process and
// idempotent (onnxruntime's MLAS asks too).
bool RequestTileData() {
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

CpuFeatures Detect() {
  CpuFeatures f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool fma = c & bit_FMA, f16c = c & bit_F16C, avx = c & bit_AVX, osxsave = c & bit_OSXSAVE;
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = ReadXcr0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;     // SSE + AVX state
  const bool os_zmm = (xcr0 & 0xe6) == 0xe6;   // + opmask, ZMM_Hi256, Hi16_ZMM
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & bit_AVX2;
  const bool avx512 = (b & bit_AVX512F) && (b & bit_AVX512BW) && (b & bit_AVX512VL) && (c & bit_AVX512VNNI);
  f.avx2 = os_ymm && avx2 && fma && f16c;
  f.avx512vnni = f.avx2 && os_zmm && avx512;
  const bool os_tiles = (xcr0 & 0x60000) == 0x60000;  // XTILECFG + XTILEDATA
  const bool amx = (d & (1u << 24)) && (d & (1u << 25));  // AMX-TILE, AMX-INT8
  f.amx = f.avx512vnni && os_tiles && amx && RequestTileData();
  return f;
}

bool Compiled(Isa isa) {
  switch (isa) {
#ifndef BITNET_HAVE_AVX512VNNI
    case Isa::kAvx512Vnni: return false;
#endif
#ifndef BITNET_HAVE_AMX
    case Isa::kAmx: return false;
#endif
    default: return true;
  }
}

}  // namespace

const CpuFeatures& DetectedCpuFeatures() {
  static const CpuFeatures features = Detect();
  return features;
}

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kRef: return "ref";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512Vnni: return "avx512";
    case Isa::kAmx: return "amx";
  }
  return "?";
}

bool IsaAvailable(Isa isa) {
  const CpuFeatures& f = DetectedCpuFeatures();
  switch (isa) {
    case Isa::kRef: return true;
    case Isa::kAvx2: return f.avx2;
    case Isa::kAvx512Vnni: return f.avx512vnni && Compiled(isa);
    case Isa::kAmx: return f.amx && Compiled(isa);
  }
  return false;
}

Isa SelectIsa(const char* op) {
  const Isa all[] = {Isa::kAmx, Isa::kAvx512Vnni, Isa::kAvx2, Isa::kRef};
  const char* requested = std::getenv("BITNET_ISA");
  if (requested == nullptr || *requested == '\0') {
    for (Isa isa : all) {
      if (IsaAvailable(isa)) return isa;
    }
  }
  std::string available;
  for (Isa isa : all) {
    if (IsaAvailable(isa)) available += std::string(available.empty() ? "" : ", ") + IsaName(isa);
  }
  for (Isa isa : all) {
    if (std::strcmp(requested, IsaName(isa)) != 0) continue;
    if (!IsaAvailable(isa)) {
      Fail(op, "BITNET_ISA=", requested, " is not available on this CPU or in this build (available: ",
           available, "); unset BITNET_ISA to use the fastest available path");
    }
    return isa;
  }
  Fail(op, "BITNET_ISA=", requested, " is not one of ref, avx2, avx512, amx (available here: ", available,
       "); unset it to use the fastest available path");
}

}  // namespace bitnet
