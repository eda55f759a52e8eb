"""Decoding: `sample` (pure, jittable) and `generate` (the convenient wrapper), `SamplingConfig`, `SampleResult`;
the AR baseline in `bard_jax.sampler.ar`."""

from bard_jax.sampler.config import SamplingConfig
from bard_jax.sampler.diffusion import SamplerOutput, generate, sample
from bard_jax.sampler.result import SampleResult

__all__ = ["SampleResult", "SamplerOutput", "SamplingConfig", "generate", "sample"]
