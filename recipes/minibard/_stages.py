"""Shared pieces of the Mini-BARD recipes (`python -m bard_jax.minibard` runs them in order). Not a recipe.

The chain mirrors the release at CPU scale: an AR source trained from scratch on the synthetic task, PBM
4 -> 8 -> 16 -> 32 each from the previous stage, SWD students B8/B16/B32 from the same-block PBM stage with the
PBM B4 anchor as teacher. Paths default to MINIBARD_RUNS (default runs/minibard); the runner passes them
explicitly.
"""

import dataclasses
import os

from bard_jax.train.config import DataSection, ModelSection, ObjectiveSection, OptimizerConfig, TrainConfig
from bard_jax.train.optimizer import GroupSchedule

RUNS = os.environ.get("MINIBARD_RUNS", os.path.join("runs", "minibard"))
DATA = DataSection(
    synthetic=True, synthetic_dir=os.path.join(RUNS, "data"), synthetic_n=20000, synthetic_eval_n=400,
    global_batch_size=16, micro_batch_size=16, length_buckets=(96, 160, 256), patch_buckets=(24,), max_images=1,
    # One response bucket: 95% of batches of 16 hold a list answer (up to 55 tokens) anyway, and a second bucket
    # is a second compile in every stage.
    response_buckets=(64,),
)
MODEL = ModelSection(preset="mini", param_dtype="float32", compute_dtype="float32")


def optim(peak: float, warmup: int, floor: float) -> OptimizerConfig:
    """AdamW on the language side; the whole vision side (tower and mergers) held at its random init.

    The release trains a pretrained tower at 0.1x (stage 1) or 1x (stage 2). Mini-BARD has no pretrained tower, and
    one trained from scratch on 20k scenes learns shapes and colours faster than the language model learns to read
    the digits, then drowns them (README, "Decisions where the spec left room"): held fixed, the random tower keeps
    every cell's digit linearly readable and the AR source reaches 54.5-56.75% (three runs) instead of 46.8%."""
    return OptimizerConfig(language=GroupSchedule(peak, start_ratio=0.1, floor_ratio=floor),
                           vision=GroupSchedule(0.0), mergers="vision",
                           warmup_steps=warmup, clip_norm=1.0, weight_decay=0.0)


def ar(steps: int = 7000) -> TrainConfig:
    """The source model: next-token prediction from random weights."""
    return TrainConfig(name="minibard_ar", workdir=os.path.join(RUNS, "ar"), steps=steps, log_every=10,
                       ckpt_every=500, export_hf=False, model=MODEL, data=DATA,
                       objective=ObjectiveSection(kind="ar"), optim=optim(1e-3, 50, 0.05))


def pbm(block_size: int, steps: int | None = None) -> TrainConfig:
    """Stage 1 at one block size, from the previous stage (the AR source for B4). B4 bridges AR to diffusion and
    gets 600 steps; the merges after it start from a model that already denoises (their loss levels off within
    200 steps) and get 400."""
    if steps is None:
        steps = 600 if block_size == 4 else 400
    prev = "ar" if block_size == 4 else f"pbm_b{block_size // 2}"
    return TrainConfig(
        name=f"minibard_pbm_b{block_size}", workdir=os.path.join(RUNS, f"pbm_b{block_size}"), steps=steps,
        log_every=10, ckpt_every=500, export_hf=False,
        model=dataclasses.replace(MODEL, preset="", init_from=os.path.join(RUNS, prev)), data=DATA,
        objective=ObjectiveSection(kind="pbm", block_size=block_size, noise="mask"), optim=optim(5e-4, 30, 0.1),
    )


def swd(block_size: int, steps: int = 500) -> TrainConfig:
    """Stage 2: the PBM student of this block size distilled from the PBM B4 anchor."""
    return TrainConfig(
        name=f"minibard_swd_b{block_size}", workdir=os.path.join(RUNS, f"swd_b{block_size}"), steps=steps,
        log_every=10, ckpt_every=500, export_hf=False,
        model=dataclasses.replace(MODEL, preset="", init_from=os.path.join(RUNS, f"pbm_b{block_size}")), data=DATA,
        objective=ObjectiveSection(kind="swd", block_size=block_size, noise="mask",
                                   teacher_init_from=os.path.join(RUNS, "pbm_b4"), teacher_block_size=4, top_k=16,
                                   ce_weight=1.0, kd_weight=0.5, temperature=1.0),
        optim=optim(3e-4, 30, 0.1),
    )
