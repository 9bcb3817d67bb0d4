"""The numpy references: quantization, bit packing and the conversion strategies of the precision
converter. Imports core."""
