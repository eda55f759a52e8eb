"""Data: the Qwen3-VL processor, the embedded synthetic task, and the training pipeline."""

from bard_jax.data.processor import DataError, Processor

__all__ = ["DataError", "Processor"]
