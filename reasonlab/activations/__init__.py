"""Activation baseline: temperature-0 MBPP code generation with residual-stream activations captured, every program run against its tests in the sandbox."""
