"""The parts of a run that touch files: data, weights, the teacher, the objective, and the final export."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable
from typing import Any

import jax

from bard_jax import hf
from bard_jax.config import ModelConfig, preset
from bard_jax.data.pipeline import PipelineConfig, TrainStream, read_jsonl
from bard_jax.data.prefetch import BatchStream, Prefetcher
from bard_jax.data.processor import Processor
from bard_jax.diffusion.losses import ObjectiveConfig, loss_fn
from bard_jax.diffusion.noise import NoiseConfig
from bard_jax.errors import BardError
from bard_jax.modeling import init_params, load_pretrained
from bard_jax.sharding import param_shardings
from bard_jax.train.config import TrainConfig
from bard_jax.train.optimizer import check_optimizer_config


class SetupError(BardError, ValueError):
    """A run that cannot start: names the path, key or mismatch."""


@dataclasses.dataclass
class Run:
    model_config: ModelConfig
    teacher_config: ModelConfig | None
    processor_dir: str
    data: BatchStream  # a TrainStream, behind a Prefetcher unless data.prefetch is 0
    objective: ObjectiveConfig
    loss_fn: Callable


def resolve_weights(path: str) -> str:
    """A weights directory, or a previous stage's workdir (its export/)."""
    if not path:
        return ""
    if os.path.isdir(os.path.join(path, "export")):
        return os.path.join(path, "export")
    return path


def _synthetic_dir(cfg: TrainConfig) -> str:
    d = cfg.data
    out = d.synthetic_dir or os.path.join(os.path.dirname(cfg.workdir), "data", f"synthetic_s{d.synthetic_seed}")
    if jax.process_index() == 0:
        from bard_jax.data.synthetic import ensure

        # Reused only when complete and made with these settings (a killed generation or other n is redone).
        ensure(out, d.synthetic_n, d.synthetic_seed, d.synthetic_eval_n)
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


def objective_config(cfg: TrainConfig, processor: Processor, vocab_size: int) -> ObjectiveConfig:
    o = cfg.objective
    tok = processor.tokenizer
    mask_id = tok.convert_tokens_to_ids("<|mask|>") if "<|mask|>" in tok.get_vocab() else o.mask_token_id
    prior = {"mask_rate": "mask_rate"}.get(o.noise, o.noise)
    noise = NoiseConfig(prior=prior, mask_token_id=mask_id, replace_bound=min(o.replace_bound, vocab_size),
                        pad_token_id=processor.im_end_id, rate_min=o.mask_rate_min, rate_max=o.mask_rate_max,
                        at_least_one_mask=o.at_least_one_mask)
    if not 0 <= mask_id < vocab_size:
        raise SetupError(f"mask token id {mask_id} outside the vocabulary [0, {vocab_size})")
    return ObjectiveConfig(
        kind=o.kind, block_size=o.block_size, noise=noise, clean_sees_noisy=o.clean_sees_noisy,
        teacher_block_size=o.teacher_block_size, top_k=o.top_k, ce_weight=o.ce_weight, kd_weight=o.kd_weight,
        temperature=o.temperature, remat_policy=cfg.model.remat_policy, compute_dtype=cfg.model.compute_dtype,
    )


def keep_question_types(records: list[dict], types: tuple[str, ...], path: str) -> list[dict]:
    """The records whose meta.qtype is in `types` (all of them when `types` is empty). An empty result is an error
    that names the types the file does hold."""
    if not types:
        return records
    kept = [r for r in records if (r.get("meta") or {}).get("qtype") in types]
    if not kept:
        held = sorted({str((r.get("meta") or {}).get("qtype")) for r in records})
        raise SetupError(f"data.question_types {list(types)}: no sample of {path} has one of them "
                         f"(its meta.qtype values: {held})")
    return kept


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
    processor_dir = d.processor or resolve_weights(cfg.model.init_from)
    if d.synthetic and not train:
        syn = _synthetic_dir(cfg)
        train, root = os.path.join(syn, "train.jsonl"), syn
        processor_dir = processor_dir or os.path.join(syn, "tokenizer")
    if not train or not os.path.isfile(train):
        raise SetupError(f"data.train_jsonl not found: {train!r}")
    if not processor_dir or not os.path.isdir(processor_dir):
        raise SetupError(f"processor (tokenizer) directory not found: {processor_dir!r} (set data.processor)")
    processor = Processor.from_pretrained(processor_dir, min_pixels=d.min_pixels or None,
                                          max_pixels=d.max_pixels or None)
    model_config = model_config_for(cfg, processor)
    obj = objective_config(cfg, processor, model_config.text.vocab_size)
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
    records, skipped = read_jsonl(train, strict=d.strict)
    records = keep_question_types(records, tuple(d.question_types), train)
    block = obj.block_size if obj.kind != "ar" else 1
    pipe = PipelineConfig(
        global_batch_size=d.global_batch_size, block_size=block, length_buckets=tuple(d.length_buckets),
        response_buckets=tuple(d.response_buckets),
        pixel_rows=max(d.patch_buckets), max_images=d.max_images, seed=d.seed,
        shard_index=jax.process_index(), shard_count=jax.process_count(), strict=d.strict, workers=d.workers,
        noisy_copy=obj.kind != "ar",
    )
    stream = TrainStream(records, processor, pipe, image_root=root, skipped=skipped, processor_dir=processor_dir,
                         stop_event=stop_event)
    if d.prefetch:
        stream = Prefetcher(stream, d.prefetch)
    seed_key = cfg.objective.seed

    def loss(params, micro, teacher_params, global_n):
        return loss_fn(params, micro, jax.random.key(seed_key), teacher_params, model_config=model_config, obj=obj,
                       global_num_samples=global_n, teacher_config=teacher_config)

    return Run(model_config, teacher_config, processor_dir, stream, obj, loss)


def fingerprint(cfg: TrainConfig, model_config: ModelConfig) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed by this recipe."""
    t, v = model_config.text, model_config.vision
    return {
        "text": [t.vocab_size, t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads,
                 t.num_key_value_heads, t.head_dim],
        "vision": [v.depth, v.hidden_size, v.intermediate_size, v.num_heads],
        "tied": model_config.tie_word_embeddings,
        "objective": [cfg.objective.kind, cfg.objective.block_size],
        "global_batch_size": cfg.data.global_batch_size,
        "param_dtype": cfg.model.param_dtype,
    }


def abstract_params(cfg: TrainConfig, model_config: ModelConfig) -> Any:
    return jax.eval_shape(lambda: init_params(model_config, jax.random.key(cfg.seed), cfg.model.param_dtype))


def initial_params(cfg: TrainConfig, model_config: ModelConfig, mesh) -> Any:
    init = resolve_weights(cfg.model.init_from)
    if init:
        return load_pretrained(init, dtype=cfg.model.param_dtype, mesh=mesh).params
    shardings = param_shardings(abstract_params(cfg, model_config), mesh)
    return jax.jit(lambda k: init_params(model_config, k, cfg.model.param_dtype), out_shardings=shardings)(
        jax.random.key(cfg.seed))


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


def _write_export(cfg: TrainConfig, model_config: ModelConfig, params: Any, run: Run) -> None:
    init = resolve_weights(cfg.model.init_from)
    raw = raw_config_of_dir(init) if init else None
    params = jax.device_get(params)
    hf.save_converted(params, model_config, raw, os.path.join(cfg.workdir, "export"), side_files_from=run.processor_dir)
    if cfg.export_hf:
        hf.export_hf(params, model_config, raw, os.path.join(cfg.workdir, "export_hf"),
                     side_files_from=run.processor_dir)
