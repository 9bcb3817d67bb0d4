"""The seed API's facades over the compiler and the optimizer: PrecisionManager and
MixedPrecisionQuantizer."""
