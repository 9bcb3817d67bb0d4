// What BitLinear and LowBitMatMul share as ops computing Y[..., N] = X[..., K] · Wᵀ: the checks of
// X and bias against the node and W, Y's shape, shape inference, and how a call's work is cut
// into tasks for the intra-op threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "bitnet/error.h"
#include "bitnet/lite_op.h"
#include "bitnet/parallel.h"
#include "cpu/ternary.h"

namespace bitnet {

// The node's attribute K, the unpadded reduction length.
inline int64_t RequiredK(const Ort::ConstKernelInfo& info, const char* op) {
  const int64_t k = RequiredInt(info, op, "K");
  if (k <= 0) Fail(op, "K=", k, " must be positive (the unpadded reduction length)");
  return k;
}

inline void CheckBias(const char* op, const std::vector<int64_t>& shape, int64_t n) {
  if (shape.size() != 1 || shape[0] != n) Fail(op, "bias has shape ", ShapeString(shape), "; it must be [N] = [", n, "]");
}

// X [..., K] checked against the node's K; returns the number of X rows (the leading dims' product).
inline int64_t XRows(const char* op, const std::vector<int64_t>& x_shape, int64_t k) {
  if (x_shape.empty() || x_shape.back() != k) {
    Fail(op, "X has shape ", ShapeString(x_shape), " but its last axis must be K=", k, " (the node's attribute)");
  }
  int64_t m = 1;
  for (size_t i = 0; i + 1 < x_shape.size(); ++i) m *= x_shape[i];
  return m;
}

// Y's shape: X's, with N for the last axis.
inline std::vector<int64_t> OutputDims(std::vector<int64_t> x_shape, int64_t n) {
  x_shape.back() = n;
  return x_shape;
}

// Y: X's type and leading dims, and W's first dim (N).
inline void InferOutputShape(ShapeInference& shapes) {
  if (shapes.InputCount() < 2) return;
  ShapeInference::TensorShape x = shapes.Input(0);
  const ShapeInference::TensorShape w = shapes.Input(1);
  if (x.dims.empty() || w.dims.size() != 2 || x.HasUnnamedUnknownDim(x.dims.size() - 1)) return;
  x.dims.back() = w.dims[0];
  x.symbols.back() = w.symbols[0];
  shapes.SetOutput(0, x);
}

// A call's work cut into tasks: runs of `task_blocks` 16-row output blocks × runs of `task_rows` X
// rows; task i covers block run i mod block_tasks() and row run i / block_tasks().
struct TaskPlan {
  int64_t m = 0;
  int64_t blocks = 0;
  int64_t task_rows = 1;
  int64_t task_blocks = 1;

  int64_t block_tasks() const { return cpu::CeilDiv(blocks, task_blocks); }
  size_t count() const { return static_cast<size_t>(block_tasks() * cpu::CeilDiv(m, task_rows)); }
};

// Few-row calls (the weights stream from memory once) are cut into tasks of W's bytes: at most
// `max_task_bytes` each (the op's choice: long contiguous runs stream faster), and, since
// onnxruntime gives a custom op no thread count, into up to kStreamingSpread tasks of at least
// kMinStreamingTaskBytes when W is smaller than that many full tasks, so that a small matrix is
// spread over the threads too (a decoder's 1024 × 1024 ternary layer, 256 KB, was one task: one
// thread whatever the thread count). onnxruntime's pool hands each thread a contiguous share of
// the tasks first. Below kMinStreamingTaskBytes per task a parallel section costs more than it
// saves: measured on a 2-core EPYC (Zen 5) VM, one costs ~3.4 µs, while 64 KB stream in ~2.6 µs.
inline constexpr int64_t kStreamingSpread = 8;
inline constexpr int64_t kMinStreamingTaskBytes = 64 * 1024;

inline TaskPlan StreamingPlan(int64_t m, int64_t blocks, int64_t block_bytes, int64_t max_task_bytes) {
  const int64_t bytes = blocks * block_bytes;
  const int64_t spread = std::clamp<int64_t>(bytes / kMinStreamingTaskBytes, 1, kStreamingSpread);
  const int64_t tasks = std::max(cpu::CeilDiv(bytes, max_task_bytes), spread);
  return TaskPlan{m, blocks, m, std::max<int64_t>(1, cpu::CeilDiv(blocks, tasks))};
}

// Many X rows: tasks of `task_blocks` blocks, also split by rows (runs of at least `min_task_rows`)
// when there would be fewer than `min_tasks` tasks.
inline TaskPlan TiledPlan(int64_t m, int64_t blocks, int64_t task_blocks, int64_t min_task_rows, int64_t min_tasks) {
  const int64_t block_tasks = cpu::CeilDiv(blocks, task_blocks);
  const int64_t row_tasks =
      std::clamp<int64_t>(cpu::CeilDiv(min_tasks, block_tasks), 1, std::max<int64_t>(1, m / min_task_rows));
  return TaskPlan{m, blocks, cpu::CeilDiv(m, row_tasks), task_blocks};
}

// kernel(m_begin, m_end, block_begin, block_end) for every task of the plan, on the intra-op threads.
template <typename Kernel>
void RunPlan(OrtKernelContext* ctx, const TaskPlan& plan, Kernel kernel) {
  const int64_t block_tasks = plan.block_tasks();
  auto task = [&](size_t i) {
    const int64_t bt = static_cast<int64_t>(i) % block_tasks, rt = static_cast<int64_t>(i) / block_tasks;
    kernel(rt * plan.task_rows, std::min(plan.m, (rt + 1) * plan.task_rows), bt * plan.task_blocks,
           std::min(plan.blocks, (bt + 1) * plan.task_blocks));
  };
  ParallelFor(ctx, plan.count(), task);
}

}  // namespace bitnet
