"""The optimizer: calibration data, per-layer sensitivity, the cost model, objectives, the plan search,
and the analysis of a compile with its HTML report. Imports the compiler and everything below it."""
