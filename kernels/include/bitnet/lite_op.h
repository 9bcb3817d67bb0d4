// How an op of this library is declared to onnxruntime. A kernel is a struct in the style of the
// lite custom-op API (onnxruntime_lite_custom_op.h):
//
//   struct MyKernel {
//     MyKernel(const OrtApi* api, const OrtKernelInfo* info);   // attributes, constant inputs
//     Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<float>& x, ...,
//                         Ort::Custom::Tensor<float>& y);        // typed inputs, then outputs
//     static void InferShape(bitnet::ShapeInference& shapes);   // output types and shapes
//   };
//
// LiteOp<MyKernel> keeps the lite API's argument marshalling and adds what it lacks: kernel
// creation, compute and shape inference all run inside Guarded(), which turns any exception
// into an OrtStatus, so nothing is thrown across the C boundary (bad attributes, shapes or
// BITNET_ISA values become session-creation or run errors with the kernel's message). Optional
// inputs left empty at the end of a node count as absent.
#pragma once

#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "bitnet/error.h"
#include "onnxruntime_cxx_api.h"
#include "onnxruntime_lite_custom_op.h"

namespace bitnet {

// Runs body(); returns nullptr, or the exception it threw as an OrtStatus.
template <typename Body>
OrtStatusPtr Guarded(Body&& body) noexcept {
  const OrtApi& api = Ort::GetApi();
  try {
    body();
    return nullptr;
  } catch (const Ort::Exception& e) {
    return api.CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const Error& e) {
    return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  } catch (const std::bad_alloc&) {
    return api.CreateStatus(ORT_FAIL, "bitnet ops: out of memory");
  } catch (const std::exception& e) {
    return api.CreateStatus(ORT_FAIL, e.what());
  } catch (...) {
    return api.CreateStatus(ORT_FAIL, "bitnet ops: unknown C++ exception");
  }
}

// Input types and shapes, output types and shapes, during onnxruntime's shape inference.
class ShapeInference {
 public:
  // A tensor's element type and dims; an unknown dim is -1 and keeps its symbol (may be "").
  struct TensorShape {
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    std::vector<int64_t> dims;
    std::vector<std::string> symbols;

    // Whether one of the first `count` dims is unknown and has no symbol (then an op says nothing
    // about its outputs: their dims could not be tied to the input's).
    bool HasUnnamedUnknownDim(size_t count) const {
      for (size_t i = 0; i < count && i < dims.size(); ++i) {
        if (dims[i] < 0 && symbols[i].empty()) return true;
      }
      return false;
    }
  };

  ShapeInference(const OrtApi& api, OrtShapeInferContext* ctx) : api_(api), ctx_(ctx) {}

  size_t InputCount() const {
    size_t count = 0;
    Ort::ThrowOnError(api_.ShapeInferContext_GetInputCount(ctx_, &count));
    return count;
  }

  TensorShape Input(size_t index) const {
    OrtTensorTypeAndShapeInfo* info = nullptr;  // owned by the context
    Ort::ThrowOnError(api_.ShapeInferContext_GetInputTypeShape(ctx_, index, &info));
    TensorShape out;
    size_t rank = 0;
    Ort::ThrowOnError(api_.GetTensorElementType(info, &out.type));
    Ort::ThrowOnError(api_.GetDimensionsCount(info, &rank));
    out.dims.resize(rank);
    std::vector<const char*> symbols(rank, nullptr);
    if (rank != 0) {
      Ort::ThrowOnError(api_.GetDimensions(info, out.dims.data(), rank));
      Ort::ThrowOnError(api_.GetSymbolicDimensions(info, symbols.data(), rank));
    }
    for (const char* s : symbols) out.symbols.emplace_back(s ? s : "");
    return out;
  }

  // The node's int or string attribute `name`; nullopt when it is absent or of another type.
  std::optional<int64_t> IntAttribute(const char* name) const {
    const OrtOpAttr* attr = Attribute(name);
    int64_t value = 0;
    size_t size = 0;
    if (attr == nullptr || !Ok(api_.ReadOpAttr(attr, ORT_OP_ATTR_INT, &value, sizeof(value), &size))) return std::nullopt;
    return value;
  }

  std::optional<std::string> StringAttribute(const char* name) const {
    const OrtOpAttr* attr = Attribute(name);
    size_t size = 0;
    if (attr == nullptr) return std::nullopt;
    Ok(api_.ReadOpAttr(attr, ORT_OP_ATTR_STRING, nullptr, 0, &size));  // reports the size (some versions fail)
    std::string value(size, '\0');
    if (!Ok(api_.ReadOpAttr(attr, ORT_OP_ATTR_STRING, value.data(), size, &size))) return std::nullopt;
    value.resize(size);
    if (!value.empty() && value.back() == '\0') value.pop_back();  // versions that count the NUL
    return value;
  }

  void SetOutput(size_t index, const TensorShape& shape) const {
    OrtTensorTypeAndShapeInfo* raw = nullptr;
    Ort::ThrowOnError(api_.CreateTensorTypeAndShapeInfo(&raw));
    Ort::TensorTypeAndShapeInfo info(raw);  // owns raw
    Ort::ThrowOnError(api_.SetTensorElementType(raw, shape.type));
    Ort::ThrowOnError(api_.SetDimensions(raw, shape.dims.data(), shape.dims.size()));
    std::vector<const char*> symbols;
    for (const std::string& s : shape.symbols) symbols.push_back(s.c_str());
    Ort::ThrowOnError(api_.SetSymbolicDimensions(raw, symbols.data(), symbols.size()));
    Ort::ThrowOnError(api_.ShapeInferContext_SetOutputTypeShape(ctx_, index, raw));
  }

 private:
  const OrtOpAttr* Attribute(const char* name) const {
    const OrtOpAttr* attr = nullptr;
    return Ok(api_.ShapeInferContext_GetAttribute(ctx_, name, &attr)) ? attr : nullptr;
  }

  bool Ok(OrtStatus* status) const {
    if (status == nullptr) return true;
    api_.ReleaseStatus(status);
    return false;
  }

  const OrtApi& api_;
  OrtShapeInferContext* ctx_;
};

// Required attributes; a missing or mistyped one is a bitnet::Error naming the op.
inline int64_t RequiredInt(const Ort::ConstKernelInfo& info, const char* op, const char* name) {
  try {
    return info.GetAttribute<int64_t>(name);
  } catch (const Ort::Exception&) {
    Fail(op, "attribute '", name, "' (int) is missing or not an int; see kernels/README.md");
  }
}

inline std::string RequiredString(const Ort::ConstKernelInfo& info, const char* op, const char* name) {
  try {
    return info.GetAttribute<std::string>(name);
  } catch (const Ort::Exception&) {
    Fail(op, "attribute '", name, "' (string) is missing or not a string; see kernels/README.md");
  }
}

// A lite custom op whose callbacks never throw (see the top of this file).
template <typename Kernel>
class LiteOp : public Ort::Custom::OrtLiteCustomStruct<Kernel> {
  using Base = Ort::Custom::OrtLiteCustomStruct<Kernel>;

 public:
  explicit LiteOp(const char* name) : Base(name, "CPUExecutionProvider") {
    name_ = name;
    // Set by Base because Kernel::Compute returns Ort::Status.
    base_compute_ = this->KernelComputeV2;
    this->CreateKernelV2 = [](const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                              void** out) -> OrtStatusPtr {
      *out = nullptr;
      return Guarded([&] {
        auto kernel = std::make_unique<typename Base::Kernel>();
        // Trailing inputs with empty names are absent: the lite API's std::optional arguments
        // then arrive empty instead of wrapping a null value.
        Ort::ConstKernelInfo kernel_info(info);
        kernel->num_input_ = kernel_info.GetInputCount();
        while (kernel->num_input_ > 0 && kernel_info.GetInputName(kernel->num_input_ - 1).empty()) {
          --kernel->num_input_;
        }
        Ort::ThrowOnError(api->KernelInfo_GetOutputCount(info, &kernel->num_output_));
        kernel->custom_op_ = std::make_unique<Kernel>(api, info);
        kernel->ep_ = static_cast<const LiteOp*>(op)->execution_provider_;
        *out = kernel.release();
      });
    };
    this->KernelComputeV2 = [](void* kernel, OrtKernelContext* ctx) -> OrtStatusPtr {
      OrtStatusPtr status = nullptr;
      OrtStatusPtr thrown = Guarded([&] {
        // onnxruntime passes no value for an input left empty before a given one; the lite API
        // would dereference it.
        Ort::KernelContext context(ctx);
        for (size_t i = 0; i < static_cast<typename Base::Kernel*>(kernel)->num_input_; ++i) {
          if (!context.GetInput(i)) {
            Fail(name_.c_str(), "input ", i, " has an empty name but a later input is given; onnxruntime passes no "
                 "value for it");
          }
        }
        status = base_compute_(kernel, ctx);
      });
      return thrown ? thrown : status;
    };
    this->InferOutputShapeFn = [](const OrtCustomOp*, OrtShapeInferContext* ctx) -> OrtStatusPtr {
      return Guarded([&] {
        ShapeInference shapes(Ort::GetApi(), ctx);
        Kernel::InferShape(shapes);
      });
    };
  }

 private:
  static inline OrtStatusPtr(ORT_API_CALL* base_compute_)(void*, OrtKernelContext*) = nullptr;
  static inline std::string name_;
};

// The ORT op objects one op file contributes (one per type overload). They live as long as the
// process: sessions keep pointers to them.
using OpList = std::vector<Ort::Custom::OrtLiteCustomOp*>;

template <typename Kernel>
Ort::Custom::OrtLiteCustomOp* MakeOp(const char* name) {
  return new LiteOp<Kernel>(name);
}

}  // namespace bitnet
