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
    synthetic=True, synthetic_dir=os.path.join(RUNS, "data"), synthetic_task="attributes", synthetic_n=20000,
    synthetic_eval_n=400,
    global_batch_size=16, micro_batch_size=16, length_buckets=(96, 160, 256), patch_buckets=(24,), max_images=1,
    # One response bucket: 95% of batches of 16 hold a list answer (up to 55 tokens) anyway, and a second bucket
    # is a second compile in every stage.
    response_buckets=(64,),
)
MODEL = ModelSection(preset="mini", param_dtype="float32", compute_dtype="float32")


def optim(peak: float, warmup: int, floor: float) -> OptimizerConfig:
    """AdamW on the language side; the whole vision side (tower and mergers) held at its random init.

    The release trains a pretrained tower at 0.1x (stage 1) or 1x (stage 2). Mini-BARD has no pretrained tower. On the
    digits task a tower trained from scratch drowned the digits (docs/minibard.md). On the attributes task the AR
    pilots (2000 steps) tell the same story: with the tower at 0.1x and the mergers at the language rate, the merged
    windows put 70% of their variance on size and 3% on colour, and the source names a colour or shape at chance (it
    always answers "yellow", "square") while it gets position 99% and size 96% right; with the tower at 1x the loss
    is higher still. A random tower spreads the variance over colour, shape, size and fill (16, 12, 12, 11%), and a
    linear probe reads each of them from its windows at 100%."""
    return OptimizerConfig(language=GroupSchedule(peak, start_ratio=0.1, floor_ratio=floor),
                           vision=GroupSchedule(0.0), mergers="vision",
                           warmup_steps=warmup, clip_norm=1.0, weight_decay=0.0)


# Stage lengths (optimizer updates). B4 bridges AR to diffusion and gets the most; each merge after it starts from
# a model that already denoises; the SWD students start from the PBM stage of their block size.
STEPS = {"ar": 8000, "pbm_b4": 800, "pbm_b8": 300, "pbm_b16": 300, "pbm_b32": 300, "swd": 300}
# Each stage's data seed (data order and diffusion noise); bard_jax.minibard.stages holds the same numbers.
SEEDS = {"ar": 0, "pbm_b4": 1, "pbm_b8": 2, "pbm_b16": 3, "pbm_b32": 4, "swd_b8": 5, "swd_b16": 6, "swd_b32": 7}


def _data(seed: int) -> DataSection:
    return dataclasses.replace(DATA, seed=seed)


def ar(steps: int = STEPS["ar"]) -> TrainConfig:
    """The source model: next-token prediction from random weights."""
    return TrainConfig(name="minibard_ar", workdir=os.path.join(RUNS, "ar"), steps=steps, log_every=10,
                       ckpt_every=500, export_hf=False, model=MODEL, data=_data(SEEDS["ar"]),
                       objective=ObjectiveSection(kind="ar", seed=SEEDS["ar"]), optim=optim(1e-3, 50, 0.05))


def pbm(block_size: int, steps: int | None = None, *, name: str = "", prev: str = "", seed: int | None = None,
        noise: str = "mask", shift_labels: bool = False) -> TrainConfig:
    """Stage 1 at one block size, from the previous stage (the AR source for B4)."""
    name = name or f"pbm_b{block_size}"
    prev = prev or ("ar" if block_size == 4 else f"pbm_b{block_size // 2}")
    seed = SEEDS[name] if seed is None else seed
    return TrainConfig(
        name=f"minibard_{name}", workdir=os.path.join(RUNS, name), steps=steps or STEPS[name],
        log_every=10, ckpt_every=500, export_hf=False,
        model=dataclasses.replace(MODEL, preset="", init_from=os.path.join(RUNS, prev)), data=_data(seed),
        objective=ObjectiveSection(kind="pbm", block_size=block_size, noise=noise, seed=seed,
                                   shift_labels=shift_labels),
        optim=optim(5e-4, 30, 0.1),
    )


def swd(block_size: int, steps: int = STEPS["swd"], *, name: str = "", teacher: str = "pbm_b4",
        teacher_kind: str = "diffusion", seed: int | None = None) -> TrainConfig:
    """Stage 2: the PBM student of this block size distilled from the PBM B4 anchor (or, for the ablation, from the
    AR source)."""
    name = name or f"swd_b{block_size}"
    seed = SEEDS[f"swd_b{block_size}"] if seed is None else seed
    return TrainConfig(
        name=f"minibard_{name}", workdir=os.path.join(RUNS, name), steps=steps,
        log_every=10, ckpt_every=500, export_hf=False,
        model=dataclasses.replace(MODEL, preset="", init_from=os.path.join(RUNS, f"pbm_b{block_size}")),
        data=_data(seed),
        objective=ObjectiveSection(kind="swd", block_size=block_size, noise="mask", seed=seed,
                                   teacher_init_from=os.path.join(RUNS, teacher), teacher_kind=teacher_kind,
                                   teacher_block_size=1 if teacher_kind == "ar" else 4, top_k=16,
                                   ce_weight=1.0, kd_weight=0.5, temperature=1.0),
        optim=optim(3e-4, 30, 0.1),
    )


# ---------------------------------------------------------- the ablations (python -m bard_jax.minibard --ablations)
def direct_b32() -> TrainConfig:
    """(a) AR -> B32 in one stage, with as many steps as PBM B4 + B8 + B16 + B32 together."""
    total = sum(STEPS[f"pbm_b{b}"] for b in (4, 8, 16, 32))
    return pbm(32, total, name="direct_b32", prev="ar", seed=SEEDS["pbm_b4"])


def swd_b32_ar_teacher() -> TrainConfig:
    """(b) SWD B32 distilled from the AR source (its next-token distribution given the clean prefix) instead of
    the PBM B4 anchor."""
    return swd(32, name="swd_b32_ar_teacher", teacher="ar", teacher_kind="ar")


def pbm_b4_mix() -> TrainConfig:
    """(c) PBM B4 with the paper's mixed-noise prior instead of Mask."""
    return pbm(4, STEPS["pbm_b4"], name="pbm_b4_mix", prev="ar", seed=SEEDS["pbm_b4"], noise="mix")


def pbm_b4_shift() -> TrainConfig:
    """(d) PBM B4 with label shift (each position predicts the next token; decoded the same way)."""
    return pbm(4, STEPS["pbm_b4"], name="pbm_b4_shift", prev="ar", seed=SEEDS["pbm_b4"], shift_labels=True)
