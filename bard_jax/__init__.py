"""bard_jax: BARD-VL (block-diffusion Qwen3-VL) in JAX/Flax.

Public API (see README):
  load_pretrained, forward, Model, init_params, ModelConfig, SamplingConfig, generate,
  diffusion.packed_logits, data.Processor
"""

from bard_jax import diffusion
from bard_jax.config import ModelConfig, preset
from bard_jax.modeling import Model, forward, init_params, load_pretrained

__all__ = ["diffusion", "Model", "ModelConfig", "forward", "init_params", "load_pretrained", "preset"]
