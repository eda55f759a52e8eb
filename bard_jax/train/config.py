"""The training configuration a recipe returns: nested frozen dataclasses, overridable from the command line."""

from __future__ import annotations

import dataclasses

from bard_jax.train.optimizer import GroupSchedule, OptimizerConfig


@dataclasses.dataclass(frozen=True)
class ModelSection:
    # Where the weights come from: an HF / converted directory, or a previous stage's workdir (its export/).
    init_from: str = ""
    # Random initialisation from a preset ('tiny', '2b', ...) when init_from is empty (the demo's AR source).
    preset: str = ""
    # Override the preset's vocabulary (the demo's word-level tokenizer); 0 keeps the preset's.
    vocab_size: int = 0
    param_dtype: str = "float32"  # master weights
    compute_dtype: str = "bfloat16"  # activations and matmuls ("float32" for exactness tests)
    remat_policy: str = "none"  # none | full | dots


@dataclasses.dataclass(frozen=True)
class DataSection:
    train_jsonl: str = ""
    image_root: str = ""
    processor: str = ""  # tokenizer + preprocessor dir; empty: model.init_from
    # Generate the embedded synthetic task into WORKDIR/../data (or synthetic_dir) when no train_jsonl is given.
    synthetic: bool = False
    synthetic_dir: str = ""
    synthetic_n: int = 2000
    synthetic_eval_n: int = 200
    synthetic_seed: int = 0
    global_batch_size: int = 8
    micro_batch_size: int = 8  # per optimizer update: global_batch_size / micro_batch_size accumulation steps
    length_buckets: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192)
    response_buckets: tuple[int, ...] = (16, 64, 256, 1024, 4096)  # supervised-slot buckets (padded response)
    patch_buckets: tuple[int, ...] = (256, 1024, 4096, 16384)
    max_images: int = 4
    min_pixels: int = 0  # 0: the processor's setting
    max_pixels: int = 0
    workers: int = 0
    prefetch: int = 1  # batches prepared ahead in a background thread while the device trains (0: none)
    # Train only on samples whose meta.qtype is one of these (the synthetic task's question types); empty: all.
    question_types: tuple[str, ...] = ()
    seed: int = 0
    strict: bool = False


@dataclasses.dataclass(frozen=True)
class ObjectiveSection:
    kind: str = "pbm"  # ar | pbm | swd
    block_size: int = 4
    noise: str = "mask"  # mask | uniform | mix | edit | mask_rate
    mask_rate_min: float = 0.10  # the per-sample rate strategy (noise="mask_rate")
    mask_rate_max: float = 0.50
    at_least_one_mask: bool = True
    clean_sees_noisy: bool = True  # the release's quirk (default); False = strict mask
    mask_token_id: int = 151671
    pad_token_id: int = 151645
    replace_bound: int = 151646  # uniform replacements draw ids in [0, replace_bound)
    seed: int = 0
    # Stage 2 (SWD)
    teacher_init_from: str = ""
    teacher_block_size: int = 4
    top_k: int = 16
    ce_weight: float = 1.0
    kd_weight: float = 0.5
    temperature: float = 1.0


@dataclasses.dataclass(frozen=True)
class MeshSection:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def shape(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    name: str = "run"
    workdir: str = ""  # empty: runs/<name>
    steps: int = 100  # optimizer updates
    log_every: int = 1
    ckpt_every: int = 100
    keep_checkpoints: int = 3
    seed: int = 0
    export_hf: bool = True
    # Stop (checkpoint and exit, as on SIGTERM) once this step is reached; 0 = run to `steps`. Lets a job
    # scheduler slice a run into time-limited pieces; re-running the same command resumes.
    stop_at_step: int = 0
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    objective: ObjectiveSection = ObjectiveSection()
    optim: OptimizerConfig = OptimizerConfig()
    mesh: MeshSection = MeshSection()


# Stage settings of the release (spec section 7), shared by the recipes.
PBM_OPTIM = OptimizerConfig(
    language=GroupSchedule(2e-5, start_ratio=0.1, floor_ratio=0.05),
    vision=GroupSchedule(2e-6, start_ratio=0.1, floor_ratio=0.1),
    b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, warmup_steps=-1, clip_norm=1.0,
)
SWD_OPTIM = OptimizerConfig(
    language=GroupSchedule(6e-6, start_ratio=0.1, floor_ratio=0.5),
    vision=GroupSchedule(6e-6, start_ratio=0.1, floor_ratio=0.5),
    b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, warmup_steps=100, clip_norm=1.0,
)
