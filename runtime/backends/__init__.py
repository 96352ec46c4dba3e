"""Inference backends; the precisions they may run in, importable without torch (the CLI)."""

PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # int8: the CPU's dynamic quantisation
