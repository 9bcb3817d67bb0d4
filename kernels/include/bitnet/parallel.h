// Work splitting over onnxruntime's intra-op thread pool (KernelContext_ParallelFor), so the
// session's intra_op_num_threads governs the threads. With one thread ORT runs the tasks inline.
#pragma once

#include <cstddef>
#include <exception>
#include <mutex>

#include "onnxruntime_cxx_api.h"

namespace bitnet {

// Calls task(i) for i in [0, count), possibly concurrently. An exception a task throws (e.g.
// std::bad_alloc for scratch memory) never reaches ORT's pool: the first one is rethrown here
// once every task has finished.
template <typename Task>
void ParallelFor(OrtKernelContext* ctx, size_t count, Task& task) {
  if (count == 0) return;
  if (count == 1) {
    task(size_t{0});
    return;
  }
  struct Shared {
    Task* task;
    std::mutex mutex;
    std::exception_ptr error;
  } shared{&task, {}, nullptr};
  auto trampoline = [](void* data, size_t i) {
    auto* s = static_cast<Shared*>(data);
    try {
      (*s->task)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(s->mutex);
      if (!s->error) s->error = std::current_exception();
    }
  };
  Ort::ThrowOnError(Ort::GetApi().KernelContext_ParallelFor(ctx, trampoline, count, 0, &shared));
  if (shared.error) std::rethrow_exception(shared.error);
}

}  // namespace bitnet
