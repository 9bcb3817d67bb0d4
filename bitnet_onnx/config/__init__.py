"""What the user asks for and how it is decided: configs, their file schema, presets, the policy engine,
per-layer precision specs, the validation rules and the compile report. Imports core."""
