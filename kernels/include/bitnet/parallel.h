// Work splitting over onnxruntime's intra-op thread pool (KernelContext_ParallelFor), so the
// session's intra_op_num_threads governs the threads. With one thread ORT runs the tasks inline.
#pragma once

#include <cstddef>

#include "onnxruntime_cxx_api.h"

namespace bitnet {

// Calls task(i) for i in [0, count), possibly concurrently. `task` must not throw.
template <typename Task>
void ParallelFor(OrtKernelContext* ctx, size_t count, Task& task) {
  if (count == 1) {
    task(size_t{0});
    return;
  }
  if (count == 0) return;
  auto trampoline = [](void* data, size_t i) { (*static_cast<Task*>(data))(i); };
  Ort::ThrowOnError(Ort::GetApi().KernelContext_ParallelFor(ctx, trampoline, count, 0, &task));
}

}  // namespace bitnet
