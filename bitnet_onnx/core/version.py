"""The package version, stamped into every compiled model (producer_version) and into the keys of
measured numbers; `bitnet_onnx.__version__` re-exports it."""

__version__ = "0.1.0"
