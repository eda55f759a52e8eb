"""AdamW with the release's parameter groups and the intended warmup + cosine schedules.

Groups (spec section 7): "language" = the text model, the LM head and the vision mergers (merger and deepstack
mergers); "vision" = the rest of the vision tower. `mergers="vision"` moves the mergers to the vision group (with
`vision.peak_lr=0` that holds the whole vision side, e.g. to keep what an earlier stage taught it). Each group
has its own peak learning rate and its own start and floor ratios. Weight decay never applies to norms, biases,
embeddings, position embeddings or any 1-D parameter.

The release stepped its stage-1 scheduler twice per update and its stage-2 scheduler one update late; here the
schedule is a pure function of the optimizer update count, which is what the recipes intend.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from bard_jax.errors import InputError
from bard_jax.sharding import path_str


@dataclasses.dataclass(frozen=True)
class GroupSchedule:
    """Linear warmup from start_ratio*peak to peak, then cosine down to floor_ratio*peak at the last update."""

    peak_lr: float
    start_ratio: float = 0.1
    floor_ratio: float = 0.05


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    language: GroupSchedule = GroupSchedule(2e-5, 0.1, 0.05)
    vision: GroupSchedule = GroupSchedule(2e-6, 0.1, 0.1)
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    # Warmup length in updates; -1 means the stage-1 rule min(1000, total // 10).
    warmup_steps: int = -1
    clip_norm: float = 1.0
    # The group whose schedule the vision mergers follow: "language" (the release) or "vision" (with the tower).
    mergers: str = "language"


def warmup_steps_for(cfg: OptimizerConfig, total_steps: int) -> int:
    if cfg.warmup_steps >= 0:
        return min(cfg.warmup_steps, total_steps)
    return min(1000, total_steps // 10)


def warmup_cosine(group: GroupSchedule, warmup: int, total_steps: int) -> optax.Schedule:
    """lr(step) for step = number of updates already applied (0 for the first update)."""
    peak = group.peak_lr
    decay_steps = max(total_steps - 1 - warmup, 1)

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        warm = peak * (group.start_ratio + (1.0 - group.start_ratio) * step / max(warmup, 1))
        progress = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
        cosine = peak * (group.floor_ratio + (1.0 - group.floor_ratio) * 0.5 * (1.0 + jnp.cos(math.pi * progress)))
        return jnp.where(step < warmup, warm, cosine)

    return schedule


MERGER_PREFIXES = ("visual/merger/", "visual/deepstack_merger_list/")
MERGER_GROUPS = ("language", "vision")


def param_group(path: str, mergers: str = "language") -> str:
    """'vision' for the vision tower (and its mergers when mergers='vision'), else 'language'."""
    if not path.startswith("visual/"):
        return "language"
    return mergers if path.startswith(MERGER_PREFIXES) else "vision"


STACKED_PREFIXES = ("language_model/layers/", "visual/blocks/", "visual/deepstack_merger_list/")


def decays(path: str, leaf: Any) -> bool:
    """Weight decay applies to matrices only: not to norms, biases, embeddings, position embeddings, 1-D params."""
    if path.rsplit("/", 1)[-1] in ("bias", "scale", "embedding"):
        return False
    stacked = path.startswith(STACKED_PREFIXES)  # leading layer axis
    return leaf.ndim - int(stacked) >= 2


def check_optimizer_config(cfg: OptimizerConfig) -> None:
    """Settings that no schedule can honour raise ValueError naming the recipe key."""
    if cfg.mergers not in MERGER_GROUPS:
        raise InputError(f"optim.mergers must be one of {MERGER_GROUPS}, got {cfg.mergers!r}")


def trainable_mask(cfg: OptimizerConfig, params: Any) -> Any:
    """A pytree of Python bools like `params`: False where the leaf's group has peak learning rate 0.

    Such a group is held, not trained: the train step stops its gradients, so they cost no backward pass and do
    not enter the global norm that clipping divides by (as frozen weights in PyTorch, which have no .grad). With
    them in the norm, the gradients of weights that never move would shrink every trained weight's update."""
    peaks = {"language": cfg.language.peak_lr, "vision": cfg.vision.peak_lr}
    return jax.tree_util.tree_map_with_path(lambda p, _: peaks[param_group(path_str(p), cfg.mergers)] != 0.0, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int, params: Any) -> tuple[optax.GradientTransformation, dict]:
    """The full optimizer (clip, then per-group AdamW) and the per-group schedules (for logging)."""
    check_optimizer_config(cfg)
    warmup = warmup_steps_for(cfg, total_steps)
    schedules = {
        "language": warmup_cosine(cfg.language, warmup, total_steps),
        "vision": warmup_cosine(cfg.vision, warmup, total_steps),
    }
    labels = jax.tree_util.tree_map_with_path(lambda p, _: param_group(path_str(p), cfg.mergers), params)

    def decay_mask(tree: Any) -> Any:
        # A callable, so it also works on the group-masked trees multi_transform hands to each AdamW.
        return jax.tree_util.tree_map_with_path(lambda p, x: decays(path_str(p), x), tree)

    def adamw(schedule: optax.Schedule) -> optax.GradientTransformation:
        return optax.adamw(
            schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask
        )

    tx = optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.multi_transform({name: adamw(s) for name, s in schedules.items()}, labels),
    )
    return tx, schedules
