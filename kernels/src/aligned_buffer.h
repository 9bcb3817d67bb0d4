// A 64-byte aligned, uninitialized byte buffer (weights and scratch that SIMD loops stream).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

namespace bitnet {

class AlignedBuffer {
 public:
  static constexpr size_t kAlignment = 64;

  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes)
      : data_(static_cast<uint8_t*>(::operator new[](RoundUp(bytes), std::align_val_t(kAlignment)))),
        size_(bytes) {}

  uint8_t* data() { return data_.get(); }
  const uint8_t* data() const { return data_.get(); }
  size_t size() const { return size_; }

 private:
  static size_t RoundUp(size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment + kAlignment; }
  struct Free {
    void operator()(uint8_t* p) const { ::operator delete[](p, std::align_val_t(kAlignment)); }
  };
  std::unique_ptr<uint8_t[], Free> data_;
  size_t size_ = 0;
};

}  // namespace bitnet
