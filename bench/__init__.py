"""Benchmarks, run as commands from a repository checkout (`bitnet-onnx bench <suite>` or
`python -m bench.<suite>`), never as timed tests; they are not part of the installed package because
they build their models with the repository's `models/`. `kernels`: the op library against
onnxruntime's own matmuls; `compiler`: compile time, memory, file size, latency and accuracy of a
compiled LLaMA decoder (TARGETS.md); `decode`: token-by-token decoding with a KV cache against
onnxruntime's own 4-, 2- and 8-bit quantizations."""
