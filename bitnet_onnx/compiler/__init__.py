"""`compile()`: a model file and a config in, a validated compiled model out, through the passes."""
