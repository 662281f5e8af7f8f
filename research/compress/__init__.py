"""Compression: int8 quantization (qwix), magnitude pruning; distillation is an objective."""
