"""`SamplingConfig`: the static settings of block-diffusion decoding (frozen, hashable, validated)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

from bard_jax.errors import InputError

STRATEGIES = ("low_confidence_static", "low_confidence_dynamic")
COMMITS = ("fold", "forward", "reuse")


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


class SettingsCheck:
    """Checks the fields of a frozen settings dataclass in `__post_init__` and collects every problem.

    Ints must be ints (a bool or a whole float is refused: `block_size=4.0` is a mistake somewhere upstream), reals
    must be finite numbers; accepted values are stored back as plain `int` / `float`, so equal settings hash equal
    (they are static arguments of compiled functions) whatever numeric type they arrived as.
    """

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.problems: list[str] = []

    def _get(self, name: str) -> Any:
        return getattr(self.settings, name)

    def _store(self, name: str, value: Any) -> None:
        object.__setattr__(self.settings, name, value)

    def integer(self, name: str, minimum: int) -> bool:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            self.problems.append(f"{name} must be an int, got {_shown(value)}")
            return False
        self._store(name, int(value))
        if value < minimum:
            self.problems.append(f"{name} must be >= {minimum}, got {value}")
            return False
        return True

    def real(self, name: str, low: float, high: float = math.inf, *, low_open: bool = False) -> bool:
        """A finite number in [low, high] (or (low, high] with low_open)."""
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            self.problems.append(f"{name} must be a number, got {_shown(value)}")
            return False
        value = float(value)
        if not math.isfinite(value):
            self.problems.append(f"{name} must be a finite number, got {value}")
            return False
        self._store(name, value)
        if value < low or (low_open and value == low) or value > high:
            interval = ("(" if low_open else "[") + f"{low:g}, " + (f"{high:g}]" if math.isfinite(high) else "inf)")
            self.problems.append(f"{name} must be in {interval}, got {value:g}")
            return False
        return True

    def choice(self, name: str, options: tuple[str, ...], what: str) -> None:
        value = self._get(name)
        if not isinstance(value, str) or value not in options:
            self.problems.append(f"unknown {what} {value!r}; expected one of {options}")

    def raise_problems(self) -> None:
        if self.problems:
            raise InputError(f"invalid {type(self.settings).__name__}: " + "; ".join(self.problems))


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings (spec section 6).

    max_new_tokens is rounded up to a multiple of block_size. denoising_steps is the most forwards per block; the
    transfer quota of step i splits the block into that many parts, larger parts first. commit says how a finished
    block's K/V enter the cache: "fold" (default) computes them in the forward that starts the next block (that
    forward runs both blocks; the prefill likewise runs the first block's first step), "forward" with one extra
    forward of their own (the reference's schedule; same tokens as "fold"), "reuse" keeps the last denoising
    forward's K/V (no extra work, different tokens).
    shift_labels=True decodes a model trained with the label shift (`ObjectiveConfig.shift_labels`): the prediction
    for block position i is read from the logits at i - 1, and for position 0 from the logits of the last context
    token before the block (the last prompt token for the first block); the default False is the reference.
    Every field is checked on construction (type and range; all problems in one `InputError`); the token ids are
    checked against the model's vocabulary by `generate`.
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
    commit: str = "fold"
    shift_labels: bool = False

    def __post_init__(self) -> None:
        check = SettingsCheck(self)
        check.integer("max_new_tokens", 1)
        check.integer("block_size", 1)
        check.integer("denoising_steps", 1)
        check.choice("strategy", STRATEGIES, "strategy")
        check.real("confidence_threshold", 0.0, 1.0, low_open=True)
        check.real("temperature", 0.0)
        check.integer("top_k", 0)
        check.real("top_p", 0.0, 1.0, low_open=True)
        mask_ok = check.integer("mask_token_id", 0)
        eos_ok = check.integer("eos_token_id", 0)
        # The mask id marks undecoded positions: with one id for both, a decoded EOS would read as still undecoded
        # and the unreached blocks as EOS.
        if mask_ok and eos_ok and self.mask_token_id == self.eos_token_id:
            check.problems.append(f"mask_token_id and eos_token_id are both {self.mask_token_id}")
        check.choice("commit", COMMITS, "commit mode")
        if not isinstance(self.shift_labels, bool):
            check.problems.append(f"shift_labels must be a bool, got {_shown(self.shift_labels)}")
        check.raise_problems()

    def prefill_settings(self) -> SamplingConfig:
        """The settings the prompt prefill depends on (block layout, mask id, whether the first block's first step
        rides along ("fold"), and with the label shift the logits of the last prompt token); the rest set to
        defaults, so every setting with the same layout shares one compiled prefill."""
        return SamplingConfig(max_new_tokens=self.num_blocks * self.block_size, block_size=self.block_size,
                              denoising_steps=1, mask_token_id=self.mask_token_id,
                              eos_token_id=1 if self.mask_token_id == 0 else 0,
                              commit="fold" if self.commit == "fold" else "forward", shift_labels=self.shift_labels)

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
