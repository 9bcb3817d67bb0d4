"""The vocabulary every other part speaks: precisions, layers and components, the precision plan and
the decisions it is made of, errors, the enum parser, the pass log, the metadata keys a compiled model
carries, graph walkers and text helpers. Imports nothing of bitnet_onnx outside core."""
