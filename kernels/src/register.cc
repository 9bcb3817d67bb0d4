// The library's only exported symbol. Registers every op of the op table in domain "bitnet".
#include "bitnet/lite_op.h"
#include "bitnet/ops.h"

namespace bitnet {

// The op table: one entry per op file src/<name>.cc, which defines `OpList <name>Ops()`.
#define BITNET_OP_TABLE(X) X(BitLinear) X(LowBitMatMul) X(DequantizeLowBit) X(QuantizeLowBit)

#define BITNET_DECLARE_OPS(name) OpList name##Ops();
BITNET_OP_TABLE(BITNET_DECLARE_OPS)

namespace {

struct Registry {
  Ort::CustomOpDomain domain{kDomain};

  Registry() {
#define BITNET_ADD_OPS(name) \
  for (Ort::Custom::OrtLiteCustomOp* op : name##Ops()) domain.Add(op);
    BITNET_OP_TABLE(BITNET_ADD_OPS)
  }
};

}  // namespace
}  // namespace bitnet

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    std::string message = "the bitnet op library needs onnxruntime C API " + std::to_string(ORT_API_VERSION) +
                          " (onnxruntime >= 1." + std::to_string(ORT_API_VERSION) + "); this onnxruntime is " +
                          api_base->GetVersionString() + ": upgrade onnxruntime";
    return api_base->GetApi(1)->CreateStatus(ORT_FAIL, message.c_str());
  }
  Ort::InitApi(api);
  return bitnet::Guarded([&] {
    // Never destroyed: sessions keep pointers to the domain and its ops for as long as they live.
    static bitnet::Registry* registry = new bitnet::Registry();
    Ort::UnownedSessionOptions(options).Add(registry->domain);
  });
}
