/* A user's own onnxruntime custom-op library, for tests of models with ops of an unknown custom
 * domain: acme.ops.Double computes y = 2 * x on float tensors. Plain C against onnxruntime's C API
 * (onnxruntime_c_api.h), so the tests build it with the system C compiler in a fraction of a second. */
#include <string.h>

#include "onnxruntime_c_api.h"

static const OrtApi* api;
static OrtCustomOp double_op;

/* Compute cannot report an error (version-1 kernels return void): a failed call leaves the output. */
#define TRY(call)                    \
  do {                               \
    OrtStatus* status_ = (call);     \
    if (status_ != NULL) {           \
      api->ReleaseStatus(status_);   \
      return;                        \
    }                                \
  } while (0)

static void* create_kernel(const OrtCustomOp* op, const OrtApi* ort, const OrtKernelInfo* info) {
  (void)op;
  (void)info;
  return (void*)ort;
}
static void destroy_kernel(void* kernel) { (void)kernel; }
static const char* op_name(const OrtCustomOp* op) { (void)op; return "Double"; }
static const char* provider(const OrtCustomOp* op) { (void)op; return "CPUExecutionProvider"; }
static ONNXTensorElementDataType float_type(const OrtCustomOp* op, size_t index) {
  (void)op;
  (void)index;
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
static size_t one(const OrtCustomOp* op) { (void)op; return 1; }
static int one_int(const OrtCustomOp* op) { (void)op; return 1; }
static int any_version(const OrtCustomOp* op) { (void)op; return 1 << 30; }
static OrtCustomOpInputOutputCharacteristic required(const OrtCustomOp* op, size_t index) {
  (void)op;
  (void)index;
  return INPUT_OUTPUT_REQUIRED;
}
static OrtMemType cpu_memory(const OrtCustomOp* op, size_t index) {
  (void)op;
  (void)index;
  return OrtMemTypeDefault;
}
static size_t no_pairs(int** inputs, int** outputs) {
  *inputs = NULL;
  *outputs = NULL;
  return 0;
}
static void release_pairs(int* inputs, int* outputs) {
  (void)inputs;
  (void)outputs;
}

static void compute(void* kernel, OrtKernelContext* context) {
  const OrtValue* x;
  OrtValue* y;
  OrtTensorTypeAndShapeInfo* info;
  size_t rank, count;
  int64_t dims[16];
  float* in;
  float* out;
  (void)kernel;
  TRY(api->KernelContext_GetInput(context, 0, &x));
  TRY(api->GetTensorTypeAndShape(x, &info));
  TRY(api->GetDimensionsCount(info, &rank));
  TRY(api->GetDimensions(info, dims, rank));
  TRY(api->GetTensorShapeElementCount(info, &count));
  api->ReleaseTensorTypeAndShapeInfo(info);
  TRY(api->KernelContext_GetOutput(context, 0, dims, rank, &y));
  TRY(api->GetTensorMutableData((OrtValue*)x, (void**)&in));
  TRY(api->GetTensorMutableData(y, (void**)&out));
  for (size_t i = 0; i < count; ++i) out[i] = 2.0f * in[i];
}

OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  OrtCustomOpDomain* domain;
  OrtStatus* status;
  api = base->GetApi(ORT_API_VERSION);
  memset(&double_op, 0, sizeof double_op);
  /* onnxruntime reads every member up to the version's; all of them are set. */
  double_op.version = ORT_API_VERSION;
  double_op.CreateKernel = create_kernel;
  double_op.GetName = op_name;
  double_op.GetExecutionProviderType = provider;
  double_op.GetInputType = float_type;
  double_op.GetInputTypeCount = one;
  double_op.GetOutputType = float_type;
  double_op.GetOutputTypeCount = one;
  double_op.KernelCompute = compute;
  double_op.KernelDestroy = destroy_kernel;
  double_op.GetInputCharacteristic = required;
  double_op.GetOutputCharacteristic = required;
  double_op.GetInputMemoryType = cpu_memory;
  double_op.GetVariadicInputMinArity = one_int;
  double_op.GetVariadicInputHomogeneity = one_int;
  double_op.GetVariadicOutputMinArity = one_int;
  double_op.GetVariadicOutputHomogeneity = one_int;
  double_op.GetStartVersion = one_int;
  double_op.GetEndVersion = any_version;
  double_op.GetMayInplace = no_pairs;
  double_op.ReleaseMayInplace = release_pairs;
  double_op.GetAliasMap = no_pairs;
  double_op.ReleaseAliasMap = release_pairs;
  if ((status = api->CreateCustomOpDomain("acme.ops", &domain)) != NULL) return status;
  if ((status = api->CustomOpDomain_Add(domain, &double_op)) != NULL) return status;
  return api->AddCustomOpDomain(options, domain);
}
