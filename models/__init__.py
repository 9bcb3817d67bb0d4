"""Reference models for tests, benchmarks and the README demo.

Builders (`llama`, `bert`, `convnet`) write ONNX graphs with onnx.helper and numpy only, named and
shaped the way real exporters (torch.onnx) emit them, deterministic by seed. `inputs` makes sample
inputs for any of them, `fixtures/` holds small models exported by torch.onnx from real
architectures (see models/README.md and `export_fixtures.py`, the only module that needs torch).
"""
