"""The parts of a run that touch files (data, weights, the teacher, the final export), and the one builder of the
train step, `plan_step`, shared by the loop and the dry run.

`plan_step` takes the objective config, the model configs and the mesh, and returns a `StepPlan`: the abstract
parameter / optimizer / teacher trees, their shardings, the batch schema (the largest batch the data stream can
produce, from `largest_batch`) and the compiled step. The loop runs that step; the dry run compiles the same step
for the schema's largest batch without reading a weight. Every batch the loop gets is checked against the schema,
so the dry run cannot drift from what the stream produces.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bard_jax import hf
from bard_jax.config import ModelConfig, preset
from bard_jax.data.image import ImageSettings
from bard_jax.data.jsonl_records import JsonlRecords, MalformedRecord, open_records
from bard_jax.data.pipeline import PipelineConfig, TrainStream, largest_patch_bucket
from bard_jax.data.prefetch import BatchStream, Prefetcher
from bard_jax.data.processor import DataError, Processor, image_settings_of_dir
from bard_jax.data.shape_agreement import agreed_shapes
from bard_jax.diffusion.layout import collate_packed
from bard_jax.diffusion.losses import ObjectiveConfig, loss_fn
from bard_jax.diffusion.noise import NoiseConfig
from bard_jax.errors import BardError
from bard_jax.model.attention import AttentionConfig
from bard_jax.modeling import init_params, load_pretrained
from bard_jax.sharding import LOGICAL_RULES, MESH_AXES, activation_sharding, param_shardings, replicated
from bard_jax.train.config import ObjectiveSection, TrainConfig
from bard_jax.train.optimizer import check_optimizer_config, make_optimizer, trainable_mask
from bard_jax.train.step import TrainState, init_state, make_train_step


class SetupError(BardError, ValueError):
    """A run that cannot start: names the path, key or mismatch."""


@dataclasses.dataclass
class Run:
    model_config: ModelConfig
    teacher_config: ModelConfig | None
    processor_dir: str
    data: BatchStream  # a TrainStream, behind a Prefetcher unless data.prefetch is 0
    objective: ObjectiveConfig
    pixel_rows: int  # the most image (and, apart, video) pixel rows one sample may carry (`sample_pixel_rows`)


def resolve_weights(path: str) -> str:
    """A weights directory, or a previous stage's workdir (its export/)."""
    if not path:
        return ""
    if os.path.isdir(os.path.join(path, "export")):
        return os.path.join(path, "export")
    return path


def _synthetic_dir(cfg: TrainConfig) -> str:
    d = cfg.data
    name = f"synthetic_s{d.synthetic_seed}" if d.synthetic_task == "digits" else \
        f"synthetic_{d.synthetic_task}_s{d.synthetic_seed}"
    out = d.synthetic_dir or os.path.join(os.path.dirname(cfg.workdir), "data", name)
    if jax.process_index() == 0:
        from bard_jax.data.synthetic import ensure

        # Reused only when complete and made with these settings (a killed generation or other n is redone).
        ensure(out, d.synthetic_n, d.synthetic_seed, d.synthetic_eval_n, d.synthetic_task)
    sync_processes("synthetic data")  # the other processes read what process 0 generated
    return out


def sync_processes(name: str) -> None:
    """A barrier across the processes of a multi-process run (a no-op in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"bard_jax: {name}")


def raw_config_of_dir(path: str) -> dict[str, Any]:
    """The original HF config dict of an HF or converted directory."""
    if hf.is_converted_dir(path):
        with open(os.path.join(path, hf.CONVERTED_MARKER)) as f:
            return json.load(f)["hf_config"]
    return hf.read_hf_config(path)[1]


def config_of_dir(path: str) -> ModelConfig:
    return ModelConfig.from_hf_dict(raw_config_of_dir(path), source=path)


def planned_config(path: str, fallback_preset: str) -> ModelConfig:
    """The model config of a weights directory (or a previous stage's workdir) if it exists yet, else a preset's:
    what the dry run plans with, before the stage that writes the weights has run."""
    path = resolve_weights(path)
    if path and os.path.isdir(path):
        return config_of_dir(path)
    if not fallback_preset:
        raise SetupError(f"dry run: {path!r} does not exist and the recipe names no model.preset to plan with")
    return preset(fallback_preset)


def planned_configs(cfg: TrainConfig) -> tuple[ModelConfig, ModelConfig | None]:
    """The student's and (SWD) the teacher's model configs for planning (`planned_config`; the teacher falls back to
    the release's 8B anchor)."""
    teacher = planned_config(cfg.objective.teacher_init_from, "8b") if cfg.objective.kind == "swd" else None
    return planned_config(cfg.model.init_from, cfg.model.preset), teacher


def model_config_for(cfg: TrainConfig, processor: Processor) -> ModelConfig:
    init = resolve_weights(cfg.model.init_from)
    if init:
        if not os.path.isdir(init):
            raise SetupError(f"model.init_from: directory not found: {cfg.model.init_from}")
        return config_of_dir(init)
    if not cfg.model.preset:
        raise SetupError("the recipe needs model.init_from (a checkpoint or a previous stage) or model.preset")
    base = preset(cfg.model.preset)
    tok = processor.tokenizer
    vocab = cfg.model.vocab_size or len(tok)
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    return base.replace(text=dataclasses.replace(base.text, vocab_size=vocab), **ids)


def vision_ids(model_config: ModelConfig) -> tuple[int, ...]:
    """The ids whose positions take vision embeddings or mark them: never noise replacements."""
    c = model_config
    return (c.image_token_id, c.video_token_id, c.vision_start_token_id, c.vision_end_token_id)


def objective_config(cfg: TrainConfig, vocab_size: int, mask_id: int, pad_id: int,
                     vision_ids: tuple[int, ...] = ()) -> ObjectiveConfig:
    """The objective of the recipe: the one ObjectiveConfig the loop (ids from the tokenizer) and the dry run (the
    recipe's ids; it has no tokenizer) both build the step from. `vision_ids` (the model's image / video pad and
    vision start / end ids) and the mask id are never drawn as uniform replacements."""
    o = cfg.objective
    prior = {"mask_rate": "mask_rate"}.get(o.noise, o.noise)
    noise = NoiseConfig(prior=prior, mask_token_id=mask_id, replace_bound=min(o.replace_bound, vocab_size),
                        pad_token_id=pad_id, rate_min=o.mask_rate_min, rate_max=o.mask_rate_max,
                        at_least_one_mask=o.at_least_one_mask, excluded_ids=(mask_id, *vision_ids))
    if not 0 <= mask_id < vocab_size:
        raise SetupError(f"mask token id {mask_id} outside the vocabulary [0, {vocab_size})")
    return ObjectiveConfig(
        kind=o.kind, block_size=o.block_size, noise=noise, clean_sees_noisy=o.clean_sees_noisy,
        teacher_block_size=o.teacher_block_size, top_k=o.top_k, ce_weight=o.ce_weight, kd_weight=o.kd_weight,
        temperature=o.temperature, remat_policy=cfg.model.remat_policy, compute_dtype=cfg.model.compute_dtype,
        attention=AttentionConfig(cfg.model.attention, cfg.model.attention_tile, cfg.model.attention_tile),
        shift_labels=o.shift_labels, teacher_kind=o.teacher_kind,
    )


def keep_question_types(records: JsonlRecords | list[dict], types: tuple[str, ...], path: str
                        ) -> JsonlRecords | list[dict]:
    """The records whose meta.qtype is in `types` (all of them when `types` is empty). An empty result is an error
    that names the types the file does hold. Reads every record once: a filter meant for task datasets, not for
    millions of samples. Malformed lines hold no type and are left out."""
    if not types:
        return records
    qtypes = []
    for i in range(len(records)):
        try:
            qtypes.append((records[i].get("meta") or {}).get("qtype"))
        except MalformedRecord:
            qtypes.append(None)
    kept = [i for i, q in enumerate(qtypes) if q in types]
    if not kept:
        held = sorted({str(q) for q in qtypes})
        raise SetupError(f"data.question_types {list(types)}: no sample of {path} has one of them "
                         f"(its meta.qtype values: {held})")
    return records.select(kept) if isinstance(records, JsonlRecords) else [records[i] for i in kept]


def prepare_run(cfg: TrainConfig, stop_event: threading.Event | None = None) -> Run:
    """Validate paths and compatibility, build the objective and the data stream (`stop_event`: the loop's stop
    request, which also ends a wait for usable samples)."""
    d = cfg.data
    if d.global_batch_size % d.micro_batch_size:
        raise SetupError(f"data.global_batch_size {d.global_batch_size} is not a multiple of "
                         f"data.micro_batch_size {d.micro_batch_size}")
    if d.prefetch < 0 or d.workers < 0:
        raise SetupError(f"data.prefetch ({d.prefetch}) and data.workers ({d.workers}) must be >= 0")
    check_optimizer_config(cfg.optim)  # before anything is read or written
    root = d.image_root
    train = d.train_jsonl
    init = resolve_weights(cfg.model.init_from)
    if init and not os.path.isdir(init):  # named as itself, not as the processor it would also have provided
        raise SetupError(f"model.init_from: checkpoint directory not found: {cfg.model.init_from!r}")
    processor_dir = d.processor or init
    if d.synthetic and not train:
        syn = _synthetic_dir(cfg)
        train, root = os.path.join(syn, "train.jsonl"), syn
        processor_dir = processor_dir or os.path.join(syn, "tokenizer")
    if not train:
        raise SetupError("data.train_jsonl is not set (a JSONL file, a directory of *.jsonl shards or a glob)")
    if not processor_dir:
        raise SetupError("data.processor is not set and model.init_from names no checkpoint to take the tokenizer "
                         "from: set data.processor to a directory holding the tokenizer files")
    if not os.path.isdir(processor_dir):
        raise SetupError(f"data.processor: tokenizer directory not found: {processor_dir!r}")
    processor = Processor.from_pretrained(processor_dir, min_pixels=d.min_pixels or None,
                                          max_pixels=d.max_pixels or None)
    model_config = model_config_for(cfg, processor)
    mask_id = processor.mask_id(default=cfg.objective.mask_token_id)
    check_token_overrides(cfg.objective, mask_id, processor.im_end_id, processor_dir)
    obj = objective_config(cfg, model_config.text.vocab_size, mask_id, processor.im_end_id,
                           vision_ids(model_config))
    teacher_config = None
    if obj.kind == "swd":
        tdir = resolve_weights(cfg.objective.teacher_init_from)
        if not tdir or not os.path.isdir(tdir):
            raise SetupError(f"objective.teacher_init_from: teacher checkpoint not found: "
                             f"{cfg.objective.teacher_init_from!r}")
        teacher_config = config_of_dir(tdir)
        if teacher_config.text.vocab_size != model_config.text.vocab_size:
            raise SetupError(f"teacher vocabulary {teacher_config.text.vocab_size} differs from the student's "
                             f"{model_config.text.vocab_size}")
    try:
        records = open_records(train)
    except DataError as e:
        raise SetupError(f"data.train_jsonl: {e}") from e
    if not len(records):
        raise SetupError(f"data.train_jsonl: {train} holds no records (empty, or blank lines only)")
    records = keep_question_types(records, tuple(d.question_types), train)
    st = processor.settings
    pixel_rows = sample_pixel_rows(cfg, st.max_pixels, st.patch_size, st.merge_size)
    stream = TrainStream(records, processor, pipeline_config(cfg, obj, pixel_rows), image_root=root,
                         processor_dir=processor_dir, stop_event=stop_event, shapes=agreed_shapes())
    if d.prefetch:
        stream = Prefetcher(stream, d.prefetch)
    return Run(model_config, teacher_config, processor_dir, stream, obj, pixel_rows)


def planned_max_pixels(cfg: TrainConfig) -> int:
    """The processor's `max_pixels` a run of this recipe will use, found without loading a tokenizer (for the dry
    run): `data.max_pixels` if set, else the processor directory's (`data.processor`, the weights being started from,
    or the synthetic task's), else transformers' default for Qwen3-VL."""
    d = cfg.data
    if d.max_pixels:
        return d.max_pixels
    dirs = [d.processor, resolve_weights(cfg.model.init_from)]
    for directory in filter(None, dirs):
        for where in (os.path.join(directory, "tokenizer"), directory):
            if os.path.isfile(os.path.join(where, "preprocessor_config.json")):
                return image_settings_of_dir(where).max_pixels
    if d.synthetic and not d.train_jsonl:
        from bard_jax.data.synthetic import IMAGE_MAX_PIXELS

        return IMAGE_MAX_PIXELS
    return ImageSettings().max_pixels


def sample_pixel_rows(cfg: TrainConfig, max_pixels: int | None = None, patch_size: int = 16, merge_size: int = 2
                      ) -> int:
    """The most pixel rows one sample may carry, images and (apart) videos: `data.max_images` images of at most
    `max_pixels` each (default: `planned_max_pixels`), and no more merged windows than the longest length bucket
    holds (`pipeline.largest_patch_bucket`). A sample with more is skipped; the largest batch carries this many."""
    return largest_patch_bucket(max_pixels=max_pixels or planned_max_pixels(cfg), patch_size=patch_size,
                                merge_size=merge_size, max_images=cfg.data.max_images,
                                max_length=max(cfg.data.length_buckets))


def pipeline_config(cfg: TrainConfig, obj: ObjectiveConfig, pixel_rows: int | None = None) -> PipelineConfig:
    """The data stream's settings: what the stream produces, and what the batch schema (`largest_batch`) allows.
    `pixel_rows`: the per-sample limit (default: `sample_pixel_rows` with the recipe's planned processor)."""
    d = cfg.data
    return PipelineConfig(
        global_batch_size=d.global_batch_size, block_size=obj.block_size if obj.kind != "ar" else 1,
        length_buckets=tuple(d.length_buckets), response_buckets=tuple(d.response_buckets),
        pixel_rows=pixel_rows or sample_pixel_rows(cfg), patch_buckets=tuple(d.patch_buckets),
        max_images=d.max_images, seed=d.seed, shard_index=jax.process_index(), shard_count=jax.process_count(),
        strict=d.strict, workers=d.workers, noisy_copy=obj.kind != "ar", max_videos=d.max_videos,
    )


def fingerprint(cfg: TrainConfig, model_config: ModelConfig) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed by this recipe."""
    t, v = model_config.text, model_config.vision
    out = {
        "text": [t.vocab_size, t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads,
                 t.num_key_value_heads, t.head_dim],
        "vision": [v.depth, v.hidden_size, v.intermediate_size, v.num_heads],
        "tied": model_config.tie_word_embeddings,
        "objective": [cfg.objective.kind, cfg.objective.block_size],
        "global_batch_size": cfg.data.global_batch_size,
        "param_dtype": cfg.model.param_dtype,
    }
    # Only when on: checkpoints written before the option existed (and every no-shift one) keep resuming.
    if cfg.objective.shift_labels:
        out["shift_labels"] = True
    return out


def abstract_params(cfg: TrainConfig, model_config: ModelConfig) -> Any:
    return jax.eval_shape(lambda: init_params(model_config, jax.random.key(cfg.seed), cfg.model.param_dtype))


# ------------------------------------------------------------------------------------------------ the step plan
@dataclasses.dataclass
class StepPlan:
    """The train step and everything it is compiled against, built once by `plan_step`.

    Abstract trees hold ShapeDtypeStructs. `batch` is the batch schema in the stream's host layout ([G, ...], G the
    global batch; `positions` [3, G, L]) at the recipe's largest buckets. The compiled step is
    `step_for(batch)(state, device_batch, teacher, control) -> (state, metrics)`; `control` carries the NaN guard's
    `healthy` flag and the processes' stop votes (see `control`).
    """

    mesh: Mesh
    params: Any
    param_shardings: Any
    tx: optax.GradientTransformation
    state: TrainState
    state_shardings: TrainState
    teacher: Any  # None unless the objective has a teacher
    teacher_shardings: Any
    batch: dict[str, jax.ShapeDtypeStruct]
    accum: int  # micro-batches per update
    train_step: Callable  # (state, batch, teacher, control) -> (state, metrics), pure
    _compiled: dict = dataclasses.field(default_factory=dict)
    _votes: dict = dataclasses.field(default_factory=dict)

    def step_for(self, batch: dict[str, Any]) -> Callable:
        """The jitted step for a batch with these keys (one per key set: a text-only batch may lack the image
        keys; XLA still compiles once per bucket shape)."""
        keys = tuple(sorted(batch))
        if keys not in self._compiled:
            control_shardings = jax.tree_util.tree_map(lambda x: x.sharding, self.abstract_control())
            self._compiled[keys] = jax.jit(
                self.train_step,
                in_shardings=(self.state_shardings, {k: self.batch_sharding(k) for k in keys},
                              self.teacher_shardings, control_shardings),
                out_shardings=(self.state_shardings, replicated(self.mesh)),
                donate_argnums=(0,),
            )
        return self._compiled[keys]

    # --- batches
    def batch_sharding(self, key: str) -> NamedSharding:
        """The example axis of every batch leaf over the mesh's batch axes (positions: axis 2 of [A, 3, B/A, L])."""
        batch = LOGICAL_RULES["batch"]
        spec = PartitionSpec(None, None, batch) if key == "positions" else PartitionSpec(None, batch)
        return NamedSharding(self.mesh, spec)

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        """The schema's largest batch in the step's layout, with shardings (what the dry run compiles for)."""
        return {k: jax.ShapeDtypeStruct(micro_shape(k, v.shape, self.accum), v.dtype, sharding=self.batch_sharding(k))
                for k, v in self.batch.items()}

    def device_batch(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's [B, ...] host arrays -> the step's [A, G/A, ...] global arrays (A micro-batches), checked
        against the schema first. Each process holds its own slice of every global batch."""
        check_batch(host_batch, self.batch, jax.process_count())
        out = {}
        for k, v in host_batch.items():
            v = np.asarray(v)
            if k == "positions":
                v = v.reshape((3, self.accum, v.shape[1] // self.accum) + v.shape[2:]).swapaxes(0, 1)
            else:
                v = v.reshape((self.accum, v.shape[0] // self.accum) + v.shape[1:])
            sharding = self.batch_sharding(k)
            out[k] = (jax.make_array_from_process_local_data(sharding, v) if jax.process_count() > 1
                      else jax.device_put(v, sharding))
        return out

    # --- control
    def abstract_control(self) -> dict[str, jax.ShapeDtypeStruct]:
        """`healthy`: bool scalar, replicated; `stop_votes`: bool [devices], one entry per device of the mesh."""
        return {"healthy": jax.ShapeDtypeStruct((), jnp.bool_, sharding=replicated(self.mesh)),
                "stop_votes": jax.ShapeDtypeStruct((self.mesh.size,), jnp.bool_, sharding=self._vote_sharding())}

    def control(self, healthy: jax.Array | None, stop: bool) -> dict[str, jax.Array]:
        """The control inputs of a step: `healthy` (the previous step's metrics["applied"], still on the device; None
        for the first step of a run: True) and this process's stop request as the votes of its devices."""
        if healthy is None:
            healthy = jax.make_array_from_callback((), replicated(self.mesh), lambda _: np.bool_(True))
        if stop not in self._votes:  # two possible inputs, made once (the step does not donate them)
            sharding = self._vote_sharding()
            shape = (self.mesh.size,)
            shards = [jax.device_put(np.full((1,), stop), d) for d in sharding.addressable_devices_indices_map(shape)]
            self._votes[stop] = jax.make_array_from_single_device_arrays(shape, sharding, shards)
        return {"healthy": healthy, "stop_votes": self._votes[stop]}

    def _vote_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(MESH_AXES))


def head_counts(model_config: ModelConfig, teacher_config: ModelConfig | None) -> dict[str, int]:
    """The attention head counts the mesh's tensor axis must divide (sharding.check_mesh_divides)."""
    counts = {}
    for who, c in (("", model_config), ("teacher ", teacher_config)):
        if c is not None:
            counts.update({f"{who}text query heads": c.text.num_attention_heads,
                           f"{who}text key/value heads": c.text.num_key_value_heads,
                           f"{who}vision heads": c.vision.num_heads})
    return counts


def check_matches(tree: Any, abstract: Any, what: str) -> None:
    """SetupError unless `tree` (loaded arrays) has the structure, shapes and dtypes the step was planned with."""
    if tree is None and abstract is None:
        return
    got = jax.tree_util.tree_structure(tree) if tree is not None else None
    want = jax.tree_util.tree_structure(abstract) if abstract is not None else None
    if got != want:
        raise SetupError(f"{what} does not have the parameter tree the step was planned with")
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree_util.tree_leaves(abstract)):
        if tuple(x.shape) != tuple(y.shape) or x.dtype != y.dtype:
            raise SetupError(f"{what}: {jax.tree_util.keystr(path)} is {x.dtype}{list(x.shape)}, the step was "
                             f"planned with {y.dtype}{list(y.shape)}")


def make_loss(cfg: TrainConfig, model_config: ModelConfig, teacher_config: ModelConfig | None,
              obj: ObjectiveConfig) -> Callable:
    """loss(params, micro, teacher_params, global_num_samples) -> (loss, metrics) of the recipe's objective."""
    seed_key = cfg.objective.seed

    def loss(params, micro, teacher_params, global_n):
        return loss_fn(params, micro, jax.random.key(seed_key), teacher_params, model_config=model_config, obj=obj,
                       global_num_samples=global_n, teacher_config=teacher_config)

    return loss


def plan_step(cfg: TrainConfig, model_config: ModelConfig, teacher_config: ModelConfig | None,
              obj: ObjectiveConfig, mesh: Mesh, pixel_rows: int | None = None) -> StepPlan:
    """Build the train step of a recipe on a mesh: shapes, shardings, the batch schema and the step itself. Reads
    no weights and compiles nothing yet (jit compiles on the first call or `lower`). `pixel_rows`: the per-sample
    pixel-row limit of the data stream (default: the recipe's planned one, `sample_pixel_rows`)."""
    params = abstract_params(cfg, model_config)
    p_shard = param_shardings(params, mesh)
    tx, schedules = make_optimizer(cfg.optim, cfg.steps, params)
    state = jax.eval_shape(lambda p: init_state(p, tx, cfg.seed), params)
    teacher = teacher_shard = None
    if teacher_config is not None:  # loaded at the compute dtype (setup.teacher_params)
        teacher = jax.eval_shape(lambda: init_params(teacher_config, jax.random.key(0), cfg.model.compute_dtype))
        teacher_shard = param_shardings(teacher, mesh)
    guarded_step = make_train_step(make_loss(cfg, model_config, teacher_config, obj), tx, schedules,
                                   global_batch_size=cfg.data.global_batch_size,
                                   trainable=trainable_mask(cfg.optim, params))

    def train_step(state, batch, teacher_params, control):  # (the name compile logs show)
        with activation_sharding(mesh):  # examples stay split over the batch axes inside the model
            state, metrics = guarded_step(state, batch, teacher_params, control["healthy"])
        # Each device carries its process's stop request; the any() is a tiny all-reduce inside the step, so
        # agreeing on a stop needs no collective (and no host synchronisation) of its own.
        metrics["stop"] = jnp.any(control["stop_votes"])
        return state, metrics

    return StepPlan(
        mesh=mesh, params=params, param_shardings=p_shard, tx=tx, state=state,
        state_shardings=state_shardings(state, p_shard, mesh), teacher=teacher, teacher_shardings=teacher_shard,
        batch=largest_batch(cfg, obj, model_config.vision.patch_dim, pixel_rows),
        accum=cfg.data.global_batch_size // cfg.data.micro_batch_size, train_step=train_step,
    )


def state_shardings(state_abstract: TrainState, p_shard: Any, mesh: Mesh) -> TrainState:
    """Params by the rules; optimizer moments like their params; scalars replicated."""
    rep = replicated(mesh)

    def opt_leaf(path, x):
        # optax states hold param-shaped moments under the same tree paths as the params (after the group prefix).
        sub = _match_param_sharding(path, x, state_abstract.params, p_shard)
        return sub if sub is not None else rep

    opt_shard = jax.tree_util.tree_map_with_path(opt_leaf, state_abstract.opt_state)
    return TrainState(step=rep, params=p_shard, opt_state=opt_shard, rng=rep)


def _match_param_sharding(path, x, params, p_shard):
    """The sharding of the param whose path is a suffix of this optimizer-state leaf's path (and same shape)."""
    keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path]
    for start in range(len(keys)):
        node, snode = params, p_shard
        ok = True
        for k in keys[start:]:
            if isinstance(node, dict) and k in node:
                node, snode = node[k], snode[k]
            else:
                ok = False
                break
        if ok and hasattr(node, "shape") and tuple(node.shape) == tuple(x.shape):
            return snode
    return None


# ------------------------------------------------------------------------------------------------ batch schema
def largest_batch(cfg: TrainConfig, obj: ObjectiveConfig, patch_dim: int, pixel_rows: int | None = None
                  ) -> dict[str, jax.ShapeDtypeStruct]:
    """The largest global batch the stream can produce, abstract, in its host layout, from the stream's own settings
    (`pipeline_config`): the token side laid out by the stream's `collate_packed` (its keys and dtypes) at the
    largest length bucket and the largest response bucket in whole blocks; the image side at the most pixel rows an
    example may carry and `max_images` grids; the video side (unless `max_videos` is 0) at as many rows and
    `max_videos` grids. The dry run compiles the step with every key at once, the most vision work a batch can hold.

    Letters: G global batch, L tokens, S response slots, P / Q image / video pixel rows, C patch dim.
    """
    pipe = pipeline_config(cfg, obj, pixel_rows)
    slots = -(-max(pipe.response_buckets) // pipe.block_size) * pipe.block_size
    empty = collate_packed([], max(pipe.length_buckets), slots)  # [0, L] / [3, 0, L] / [0, S] / [0]
    g = pipe.global_batch_size
    schema = {k: (tuple(g if n == 0 else n for n in v.shape), v.dtype) for k, v in empty.items()}
    schema["pixel_values"] = ((g, pipe.pixel_rows, patch_dim), np.float32)  # [G, P, C]
    schema["image_grid_thw"] = ((g, pipe.max_images, 3), np.int32)
    if pipe.max_videos:
        schema["pixel_values_videos"] = ((g, pipe.pixel_rows, patch_dim), np.float32)  # [G, Q, C]
        schema["video_grid_thw"] = ((g, pipe.max_videos, 3), np.int32)
    schema["example_index"] = ((g,), np.int64)
    # The dtypes as they will be on the device (int64 is int32 unless jax runs with 64-bit types).
    return {k: jax.ShapeDtypeStruct(shape, jax.dtypes.canonicalize_dtype(dtype)) for k, (shape, dtype) in
            schema.items()}


def micro_shape(key: str, shape: tuple[int, ...], accum: int) -> tuple[int, ...]:
    """[G, ...] -> [A, G/A, ...] (A micro-batches); `positions` [3, G, L] -> [A, 3, G/A, L]."""
    if key == "positions":
        return (accum, shape[0], shape[1] // accum) + tuple(shape[2:])
    return (accum, shape[0] // accum) + tuple(shape[1:])


def check_batch(host_batch: dict[str, Any], schema: dict[str, jax.ShapeDtypeStruct], processes: int = 1) -> None:
    """Every key of a host batch is in the schema, with its dtype and rank and no larger (the example axis is this
    process's share of the global batch). A mismatch is a bug between the data stream and `largest_batch`, which
    would make the dry run plan another program than the one that runs: it raises at once."""
    problems = []
    for k, v in host_batch.items():
        want = schema.get(k)
        if want is None:
            problems.append(f"{k!r} is not in the schema")
            continue
        v = np.asarray(v)
        limit = list(want.shape)
        batch_axis = 1 if k == "positions" else 0
        limit[batch_axis] //= processes
        dtype = jax.dtypes.canonicalize_dtype(v.dtype)
        if dtype != want.dtype or v.ndim != len(limit) or any(n > m for n, m in zip(v.shape, limit)):
            problems.append(f"{k!r} is {dtype}{list(v.shape)}, the schema allows {want.dtype}{limit}")
    if problems:
        raise RuntimeError("the data stream's batch does not match the step plan's schema (setup.largest_batch): "
                           + "; ".join(problems))


def initial_params(cfg: TrainConfig, model_config: ModelConfig, mesh) -> Any:
    init = resolve_weights(cfg.model.init_from)
    if init:
        return load_pretrained(init, dtype=cfg.model.param_dtype, mesh=mesh).params
    shardings = param_shardings(abstract_params(cfg, model_config), mesh)
    return jax.jit(lambda k: init_params(model_config, k, cfg.model.param_dtype), out_shardings=shardings)(
        jax.random.key(cfg.seed))


def check_token_overrides(objective: ObjectiveSection, mask_id: int, pad_id: int, processor_dir: str) -> None:
    """The tokenizer decides the mask and pad ids (its <|mask|>, else objective.mask_token_id; its <|im_end|>): a
    recipe value set away from the default and from what the tokenizer says would be ignored, so it is refused."""
    defaults = ObjectiveSection()
    for key, value, used, what in (("mask_token_id", objective.mask_token_id, mask_id, "<|mask|>"),
                                   ("pad_token_id", objective.pad_token_id, pad_id, "<|im_end|>")):
        if value != getattr(defaults, key) and value != used:
            raise SetupError(f"objective.{key}={value}, but the tokenizer in {processor_dir} has {what} = {used}, "
                             "which training uses: remove the override (or give the tokenizer that token)")


def teacher_params(cfg: TrainConfig, model_config: ModelConfig, mesh) -> Any:
    if cfg.objective.kind != "swd":
        return None
    return load_pretrained(resolve_weights(cfg.objective.teacher_init_from), dtype=cfg.model.compute_dtype,
                           mesh=mesh).params


def export(cfg: TrainConfig, model_config: ModelConfig, params: Any, run: Run) -> None:
    """WORKDIR/export (our format, the next stage's init_from) and WORKDIR/export_hf (an HF directory).

    Collective in a multi-process run: every process takes part in the gather, process 0 writes, and no process
    returns before the export is complete (a process that exits early would leave the others at jax.distributed's
    shutdown barrier).
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
        _write_export(cfg, model_config, params, run)
    sync_processes("export written")


def training_record(cfg: TrainConfig) -> dict[str, Any]:
    """How the exported weights were trained, kept under "training" in the export's bard_jax_config.json: the
    objective, its block size, and whether the labels were shifted (decode such a model with
    `SamplingConfig(shift_labels=True)`)."""
    o = cfg.objective
    return {"objective": o.kind, "block_size": o.block_size, "shift_labels": bool(o.shift_labels)}


def check_export_dirs(cfg: TrainConfig) -> None:
    """Before training and again before writing: WORKDIR/export (and export_hf) hold nothing but an earlier export
    of this kind, which the export replaces (a user's files there are never deleted)."""
    writer = f"the training run of {cfg.workdir}"
    hf.check_export_dir(os.path.join(cfg.workdir, "export"), "bard_jax", writer)
    if cfg.export_hf:
        hf.check_export_dir(os.path.join(cfg.workdir, "export_hf"), "hf", writer)


def _write_export(cfg: TrainConfig, model_config: ModelConfig, params: Any, run: Run) -> None:
    check_export_dirs(cfg)  # the user may have put something there while the run trained
    init = resolve_weights(cfg.model.init_from)
    raw = raw_config_of_dir(init) if init else None
    params = jax.device_get(params)
    hf.save_converted(params, model_config, raw, os.path.join(cfg.workdir, "export"), side_files_from=run.processor_dir,
                      training=training_record(cfg))
    if cfg.export_hf:
        hf.export_hf(params, model_config, raw, os.path.join(cfg.workdir, "export_hf"),
                     side_files_from=run.processor_dir)
