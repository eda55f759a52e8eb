"""The training configuration a recipe returns: nested frozen dataclasses, overridable from the command line."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from bard_jax.diffusion.losses import OBJECTIVES
from bard_jax.diffusion.noise import PRIORS
from bard_jax.model.attention import IMPLS as ATTENTION_IMPLS
from bard_jax.model.vision import REMAT_POLICIES as VISION_REMAT_POLICIES
from bard_jax.modeling import DTYPES as MODEL_DTYPES
from bard_jax.train.optimizer import MERGER_GROUPS, GroupSchedule, OptimizerConfig
from bard_jax.train.recipe import RecipeError


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
    # Attention implementation (bard_jax.model.attention): auto (flash from two tiles of queries and keys up,
    # else dense) | dense | flash; the flash tile size (queries and keys).
    attention: str = "auto"
    attention_tile: int = 512


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
    synthetic_task: str = "digits"  # digits | attributes | attributes_hard (bard_jax.data.synthetic)
    global_batch_size: int = 8
    # Examples per micro-batch (global_batch_size / micro_batch_size accumulation steps per update), split over the
    # mesh's batch shards (data x fsdp); -1: one example per batch shard, whatever the device count.
    micro_batch_size: int = 8
    length_buckets: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192)
    response_buckets: tuple[int, ...] = (16, 64, 256, 1024, 4096)  # supervised-slot buckets (padded response)
    # Pixel-row buckets below the per-sample limit, which comes from the processor's max_pixels: max_images images
    # of at most max_pixels each, no more windows than the longest length bucket holds (a sample with more is
    # skipped); each batch takes the smallest rung that holds its largest sample.
    patch_buckets: tuple[int, ...] = (256, 1024, 4096, 16384)
    max_images: int = 4
    # Videos per sample (0: samples with a video are skipped and the step plan carries no video arrays). A video's
    # pixel rows have the same limit as a sample's image rows (the largest patch bucket) and their own bucket.
    max_videos: int = 1
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
    # Opt-in label shift (pbm only): response token i is predicted at position i - 1, a block's first token at the
    # token before the block (Fast-dLLM v2 / Dream). Decode such a model with SamplingConfig(shift_labels=True).
    shift_labels: bool = False
    # Stage 2 (SWD)
    teacher_init_from: str = ""
    # "diffusion" (the reference: the small-block anchor) or "ar" (an AR model's next-token distribution given the
    # clean prefix; use teacher_block_size=1): the paper's ablation of distilling straight from the AR source.
    teacher_kind: str = "diffusion"
    teacher_block_size: int = 4
    top_k: int = 16
    ce_weight: float = 1.0
    kd_weight: float = 0.5
    temperature: float = 1.0


@dataclasses.dataclass(frozen=True)
class MeshSection:
    """Devices per mesh axis; one entry may be -1 (the devices the others leave). The default puts every device on
    fsdp: parameters, optimizer state and the teacher are sharded over all of them and each micro-batch's examples
    are split over them, so the memory per device falls as devices are added. `data` > 1 (data parallelism, e.g.
    across hosts or slices) replicates the state over groups of devices and only splits the batch; `tensor` splits
    attention heads and MLP units."""

    data: int = 1
    fsdp: int = -1
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
    # Several processes: how often (in steps) they agree on a stop request (SIGTERM to any of them). Each read waits
    # for the step before the one just dispatched, so the device does not idle for it; a larger value spaces the
    # reads out and lets a stop take up to that many steps more. One process reads nothing.
    stop_check_every: int = 1
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


# ------------------------------------------------------------------------------------------------ validation
# What each setting may name, from the modules that interpret it.
NOISES = PRIORS
DTYPES = tuple(MODEL_DTYPES)
REMAT_POLICIES = ("none", *VISION_REMAT_POLICIES)


def check_train_config(cfg: TrainConfig) -> None:
    """Every setting that cannot run, named by its recipe key, in one RecipeError; called on the command line's
    config before anything is read, written or compiled."""
    problems: list[str] = []
    # Numbers that are not finite break every schedule and loss silently; catch them wherever they are.
    not_finite = [key for key in _leaf_keys(cfg) if any(
        isinstance(v, float) and not math.isfinite(v) for v in _as_tuple(_value_at(cfg, key)))]
    problems += [f"{key} = {_value_at(cfg, key)!r}: must be a finite number" for key in not_finite]

    def need(key: str, ok: bool, what: str) -> None:
        if not ok and key not in not_finite:
            problems.append(f"{key} = {_value_at(cfg, key)!r}: {what}")
    for key in ("steps", "log_every", "ckpt_every", "stop_check_every", "keep_checkpoints", "data.global_batch_size",
                "data.max_images", "objective.block_size"):
        need(key, _value_at(cfg, key) >= 1, "must be >= 1")
    need("data.micro_batch_size", cfg.data.micro_batch_size >= 1 or cfg.data.micro_batch_size == -1,
         "must be >= 1, or -1 for one example per batch shard")
    for key in ("stop_at_step", "data.workers", "data.prefetch", "data.synthetic_eval_n", "data.min_pixels",
                "data.max_pixels", "data.max_videos", "objective.seed"):
        need(key, _value_at(cfg, key) >= 0, "must be >= 0")
    if cfg.data.synthetic and not cfg.data.train_jsonl:
        need("data.synthetic_n", cfg.data.synthetic_n >= 1, "must be >= 1")
        from bard_jax.data.synthetic import TASKS

        need("data.synthetic_task", cfg.data.synthetic_task in TASKS, f"must be one of {sorted(TASKS)}")
    for key in ("data.length_buckets", "data.response_buckets", "data.patch_buckets"):
        buckets = _value_at(cfg, key)
        need(key, bool(buckets) and all(b >= 1 for b in buckets), "must be a non-empty list of sizes >= 1")
    o = cfg.optim
    for group in ("language", "vision"):
        g = getattr(o, group)
        need(f"optim.{group}.peak_lr", g.peak_lr >= 0, "a learning rate must be >= 0 (0 holds the group)")
        need(f"optim.{group}.start_ratio", g.start_ratio >= 0, "must be >= 0")
        need(f"optim.{group}.floor_ratio", g.floor_ratio >= 0, "must be >= 0")
    need("optim.b1", 0 <= o.b1 < 1, "must be in [0, 1)")
    need("optim.b2", 0 <= o.b2 < 1, "must be in [0, 1)")
    need("optim.eps", o.eps > 0, "must be > 0")
    need("optim.weight_decay", o.weight_decay >= 0, "must be >= 0")
    need("optim.clip_norm", o.clip_norm > 0, "must be > 0")
    need("optim.warmup_steps", o.warmup_steps >= -1, "must be >= 0, or -1 for the stage-1 rule")
    need("optim.mergers", o.mergers in MERGER_GROUPS, f"must be one of {MERGER_GROUPS}")
    ob = cfg.objective
    need("objective.kind", ob.kind in OBJECTIVES, f"must be one of {OBJECTIVES}")
    need("objective.noise", ob.noise in NOISES, f"must be one of {NOISES}")
    need("objective.mask_rate_min", 0 < ob.mask_rate_min <= 1, "must be in (0, 1]")
    need("objective.mask_rate_max", ob.mask_rate_min <= ob.mask_rate_max <= 1,
         "must be in [objective.mask_rate_min, 1]")
    need("objective.shift_labels", not ob.shift_labels or ob.kind == "pbm",
         "is supported by the pbm objective only")
    if ob.kind == "swd":
        need("objective.teacher_kind", ob.teacher_kind in ("diffusion", "ar"), "must be 'diffusion' or 'ar'")
        need("objective.teacher_block_size", ob.teacher_block_size >= 1, "must be >= 1")
        need("objective.top_k", ob.top_k >= 1, "must be >= 1")
        need("objective.temperature", ob.temperature > 0, "must be > 0")
        need("objective.ce_weight", ob.ce_weight >= 0, "must be >= 0")
        need("objective.kd_weight", ob.kd_weight >= 0, "must be >= 0")
    m = cfg.model
    need("model.param_dtype", m.param_dtype in DTYPES, f"must be one of {DTYPES}")
    need("model.compute_dtype", m.compute_dtype in DTYPES, f"must be one of {DTYPES}")
    need("model.remat_policy", m.remat_policy in REMAT_POLICIES, f"must be one of {REMAT_POLICIES}")
    need("model.attention", m.attention in ATTENTION_IMPLS, f"must be one of {ATTENTION_IMPLS}")
    need("model.attention_tile", not isinstance(m.attention_tile, bool) and isinstance(m.attention_tile, int)
         and m.attention_tile >= 1, "must be an int >= 1")
    for key in ("mesh.data", "mesh.fsdp", "mesh.tensor"):
        need(key, _value_at(cfg, key) >= 1 or _value_at(cfg, key) == -1, "must be >= 1, or -1 for the rest")
    if cfg.mesh.shape().count(-1) > 1:
        problems.append(f"mesh.data, mesh.fsdp, mesh.tensor = {cfg.mesh.shape()}: at most one may be -1 (the "
                        f"devices the others leave; data parallelism over every device is mesh.data=-1 "
                        f"mesh.fsdp=1)")
    if problems:
        raise RecipeError("settings that cannot run:\n  " + "\n  ".join(problems))


def _leaf_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        keys += _leaf_keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]
    return keys


def _as_tuple(value: Any) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _value_at(cfg: Any, key: str) -> Any:
    for name in key.split("."):
        cfg = getattr(cfg, name)
    return cfg
