"""Shared pieces of the release's stage recipes (spec section 7). Not a recipe itself (no get_config)."""

import dataclasses
import os

from bard_jax.train.config import PBM_OPTIM, SWD_OPTIM, DataSection, ModelSection, ObjectiveSection, TrainConfig

# Where stage outputs go; every path is overridable (--recipe.model.init_from=..., --recipe.workdir=...).
RUNS = os.environ.get("BARD_RUNS", "runs")
# The source checkpoints users bring (HF directories of Qwen3-VL-*-Instruct converted to BARD-VL).
SOURCES = {
    "2b": os.environ.get("BARD_SOURCE_2B", "checkpoints/Qwen3-VL-Bard-2B-Instruct"),
    "4b": os.environ.get("BARD_SOURCE_4B", "checkpoints/Qwen3-VL-Bard-4B-Instruct"),
    "8b": os.environ.get("BARD_SOURCE_8B", "checkpoints/Qwen3-VL-Bard-8B-Instruct"),
}
DATA = os.environ.get("BARD_DATA", "datasets/mixed-8192")
# Global batch 256 samples in micro-batches of 1 sample per device, as the release: a micro-batch of -1 holds one
# sample per batch shard of the mesh (8 on 8 devices, so 32 micro-batches are accumulated per update; 4 on 64).
# The mesh is the default: every device on fsdp.
RELEASE_DATA = DataSection(
    train_jsonl=os.path.join(DATA, "train.jsonl"),
    image_root=DATA,
    global_batch_size=256,
    micro_batch_size=-1,
    length_buckets=(1024, 2048, 4096, 8192),
    min_pixels=256 * 256,
    max_pixels=2048 * 2048,
    workers=8,
)


def pbm(size: str, block_size: int, init_from: str, steps: int = 17000) -> TrainConfig:
    """Stage 1 (progressive block merging) of a given size and block size."""
    return TrainConfig(
        name=f"pbm_b{block_size}_{size}",
        workdir=os.path.join(RUNS, f"pbm_b{block_size}_{size}"),
        steps=steps,
        ckpt_every=1000,
        model=ModelSection(init_from=init_from, preset=size, param_dtype="float32", compute_dtype="bfloat16",
                           remat_policy="full" if size == "8b" else "projections"),
        data=RELEASE_DATA,
        objective=ObjectiveSection(kind="pbm", block_size=block_size, noise="mask"),
        optim=dataclasses.replace(PBM_OPTIM, weight_decay=0.01 if size == "8b" else 0.0),
    )


def swd(size: str, block_size: int, steps: int = 3000) -> TrainConfig:
    """Stage 2 (stage-wise distillation): student from the same-size PBM stage, teacher the B4 8B anchor."""
    return TrainConfig(
        name=f"swd_b{block_size}_{size}",
        workdir=os.path.join(RUNS, f"swd_b{block_size}_{size}"),
        steps=steps,
        ckpt_every=500,
        model=ModelSection(init_from=os.path.join(RUNS, f"pbm_b{block_size}_{size}"), preset=size,
                           param_dtype="float32", compute_dtype="bfloat16", remat_policy="projections"),
        data=dataclasses.replace(RELEASE_DATA, max_pixels=1024 * 1024),
        objective=ObjectiveSection(kind="swd", block_size=block_size, noise="mask",
                                   teacher_init_from=os.path.join(RUNS, "pbm_b4_8b"), teacher_block_size=4,
                                   top_k=16, ce_weight=1.0, kd_weight=0.5, temperature=1.0),
        optim=SWD_OPTIM,
    )
