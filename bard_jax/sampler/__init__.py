"""Block-diffusion decoding (`generate`, `SamplingConfig`)."""

from bard_jax.sampler.config import SamplingConfig
from bard_jax.sampler.diffusion import SamplerOutput, generate

__all__ = ["SamplerOutput", "SamplingConfig", "generate"]
