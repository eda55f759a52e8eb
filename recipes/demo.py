"""The embedded demo: PBM (block size 4) on the synthetic shapes task, a tiny model from random weights.

Launch:  python -m bard_jax.train --recipe recipes/demo.py [--workdir runs/demo] [--recipe.steps=400]
The synthetic data (and its tokenizer) is generated on first use next to the workdir; about a minute on a 2-core
CPU. 200 steps is what it takes for the model to answer (60 gave empty answers: the end token fills most of each
short answer's block, and is learnt first).
"""

from bard_jax.train.config import DataSection, ModelSection, ObjectiveSection, OptimizerConfig, TrainConfig
from bard_jax.train.optimizer import GroupSchedule


def get_config():
    return TrainConfig(
        name="demo",
        steps=200,
        log_every=10,
        ckpt_every=100,
        model=ModelSection(preset="tiny", param_dtype="float32", compute_dtype="float32"),
        data=DataSection(synthetic=True, synthetic_n=1000, synthetic_eval_n=100, global_batch_size=16,
                         micro_batch_size=8, length_buckets=(64, 128, 256), patch_buckets=(32,), max_images=1),
        objective=ObjectiveSection(kind="pbm", block_size=4, noise="mask"),
        optim=OptimizerConfig(language=GroupSchedule(3e-3, 0.1, 0.1), vision=GroupSchedule(3e-3, 0.1, 0.1),
                              warmup_steps=5, clip_norm=1.0),
    )
