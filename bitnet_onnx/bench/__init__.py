"""Benchmarks, run as commands (`bitnet-onnx bench <suite>` or `python -m bitnet_onnx.bench.<suite>`),
never as timed tests. `kernels`: the op library against onnxruntime's own matmuls; `compiler`: compile
time, memory, file size, latency and accuracy of a compiled LLaMA decoder (TARGETS.md)."""
