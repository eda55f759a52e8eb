"""bard_jax: BARD-VL (block-diffusion Qwen3-VL) in JAX/Flax.

Public API (see README): load_pretrained, forward, Model, init_params, ModelConfig, preset, SamplingConfig,
sample, SampleResult, generate, diffusion.packed_logits.
"""

from bard_jax import data, diffusion
from bard_jax.config import ModelConfig, preset
from bard_jax.modeling import Model, forward, init_params, load_pretrained
from bard_jax.sampler import SampleResult, SamplingConfig, generate, sample

__all__ = [
    "Model", "ModelConfig", "SampleResult", "SamplingConfig", "data", "diffusion", "forward", "generate",
    "init_params", "load_pretrained", "preset", "sample",
]
