"""`SamplingConfig`: the static settings of block-diffusion decoding (frozen, hashable, validated)."""

from __future__ import annotations

import dataclasses

from bard_jax.errors import InputError

STRATEGIES = ("low_confidence_static", "low_confidence_dynamic")
COMMITS = ("forward", "reuse")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings (spec section 6).

    max_new_tokens is rounded up to a multiple of block_size. denoising_steps is the most forwards per block; the
    transfer quota of step i splits the block into that many parts, larger parts first. commit="forward" writes the
    finished block's K/V with one extra forward (the reference); "reuse" keeps the last denoising forward's K/V.
    """

    max_new_tokens: int = 128
    block_size: int = 4
    denoising_steps: int = 4
    strategy: str = "low_confidence_dynamic"
    confidence_threshold: float = 0.9
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    mask_token_id: int = 151671
    eos_token_id: int = 151645
    commit: str = "forward"

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens <= 0:
            problems.append(f"max_new_tokens must be > 0, got {self.max_new_tokens}")
        if self.block_size < 1:
            problems.append(f"block_size must be >= 1, got {self.block_size}")
        if self.denoising_steps < 1:
            problems.append(f"denoising_steps must be >= 1, got {self.denoising_steps}")
        if self.strategy not in STRATEGIES:
            problems.append(f"unknown strategy {self.strategy!r}; expected one of {STRATEGIES}")
        if not 0.0 < self.confidence_threshold <= 1.0:
            problems.append(f"confidence_threshold must be in (0, 1], got {self.confidence_threshold}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.commit not in COMMITS:
            problems.append(f"unknown commit mode {self.commit!r}; expected one of {COMMITS}")
        if problems:
            raise InputError("invalid SamplingConfig: " + "; ".join(problems))

    def prefill_settings(self) -> SamplingConfig:
        """The settings the prompt prefill depends on (block layout, mask id); the rest set to defaults, so every
        setting with the same layout shares one compiled prefill."""
        return SamplingConfig(max_new_tokens=self.num_blocks * self.block_size, block_size=self.block_size,
                              denoising_steps=1, mask_token_id=self.mask_token_id, eos_token_id=0)

    def decode_settings(self) -> SamplingConfig:
        """The settings compiled into the decode loop: all but the confidence threshold, which the sampler passes
        as a value."""
        return dataclasses.replace(self, confidence_threshold=1.0)

    @property
    def num_blocks(self) -> int:
        return -(-self.max_new_tokens // self.block_size)

    def transfer_schedule(self) -> tuple[int, ...]:
        """Tokens to unmask at each step: b split into s parts, the first b % s steps one larger."""
        base, extra = divmod(self.block_size, self.denoising_steps)
        return tuple(base + (1 if i < extra else 0) for i in range(self.denoising_steps))
