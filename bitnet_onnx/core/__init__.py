"""The vocabulary every other part speaks: precisions, layers and components, errors, the pass log, the
metadata keys a compiled model carries, graph walkers and text helpers. Imports nothing of bitnet_onnx."""
