// A 64-byte aligned, uninitialized byte buffer (weights and scratch that SIMD loops stream).
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

namespace bitnet {

class AlignedBuffer {
 public:
  static constexpr size_t kAlignment = 64;
  static constexpr size_t kHugePage = size_t{2} << 20;

  // kHuge is for large read-mostly buffers that kernels stream from memory (repacked weights): a
  // buffer of at least one 2 MB page is 2 MB aligned and advised to use transparent huge pages,
  // which cuts the TLB misses of a stream ~500× (Linux backs them when THP is "always" or
  // "madvise"; otherwise this is only an alignment).
  enum class Pages { kSmall, kHuge };

  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes, Pages pages = Pages::kSmall) : size_(bytes) {
    const size_t alignment = pages == Pages::kHuge && bytes >= kHugePage ? kHugePage : kAlignment;
    const size_t allocated = RoundUp(bytes + kAlignment, alignment);  // slack for over-reads
    data_ = {static_cast<uint8_t*>(::operator new[](allocated, std::align_val_t(alignment))), Free{alignment}};
    if (alignment == kHugePage) madvise(data_.get(), allocated, MADV_HUGEPAGE);  // a hint: failure is harmless
  }

  uint8_t* data() { return data_.get(); }
  const uint8_t* data() const { return data_.get(); }
  size_t size() const { return size_; }

 private:
  static size_t RoundUp(size_t bytes, size_t alignment) { return (bytes + alignment - 1) / alignment * alignment; }
  struct Free {
    size_t alignment;  // of the allocation (the deleter of an empty buffer never runs)
    void operator()(uint8_t* p) const { ::operator delete[](p, std::align_val_t(alignment)); }
  };
  std::unique_ptr<uint8_t[], Free> data_;
  size_t size_ = 0;
};

}  // namespace bitnet
