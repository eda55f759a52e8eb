"""`--dry-run`: plan a recipe on a mesh without reading any weights.

Builds the config, abstract parameter / optimizer / teacher shapes, the mesh and the shardings, compiles the train
step for the recipe's largest buckets, and reports per-device memory: parameters, optimizer state, teacher, and
XLA's temporaries (activations) of the compiled step. Fake CPU devices are fine for planning
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from bard_jax.config import ModelConfig, preset
from bard_jax.diffusion.losses import ObjectiveConfig, loss_fn
from bard_jax.diffusion.noise import NoiseConfig
from bard_jax.errors import InputError
from bard_jax.modeling import init_params
from bard_jax.sharding import param_shardings, replicated
from bard_jax.train.config import TrainConfig
from bard_jax.train.optimizer import make_optimizer, trainable_mask
from bard_jax.train.step import init_state, make_train_step

GiB = 2**30


def _config(path: str, fallback: str) -> ModelConfig:
    from bard_jax.train.setup import config_of_dir, resolve_weights

    path = resolve_weights(path)
    if path and os.path.isdir(path):
        return config_of_dir(path)
    if not fallback:
        raise InputError(f"dry run: {path!r} does not exist and the recipe names no model.preset to plan with")
    return preset(fallback)


def per_device_bytes(tree, shardings) -> float:
    """Bytes one device holds for a tree of abstract arrays under their shardings (the largest device)."""
    total = 0
    for x, s in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(shardings)):
        shard = s.shard_shape(x.shape)
        total += int(np.prod(shard)) * jnp.dtype(x.dtype).itemsize
    return total


def abstract_batch(cfg: TrainConfig, accum: int, micro: int, patch_dim: int) -> dict:
    d = cfg.data
    length, slots = max(d.length_buckets), max(d.response_buckets)
    i32 = jnp.int32

    def s(shape, dtype=i32):
        return jax.ShapeDtypeStruct((accum,) + shape, dtype)

    return {
        "input_ids": s((micro, length)), "kind": s((micro, length)), "seg_index": s((micro, length)),
        "positions": s((3, micro, length)), "labels": s((micro, length)), "pad_tail": s((micro, length), bool),
        "valid": s((micro, length), bool), "noisy_index": s((micro, slots)), "noisy_valid": s((micro, slots), bool),
        "prefix_len": s((micro,)), "response_len": s((micro,)), "real_response_len": s((micro,)),
        "pixel_values": s((micro, max(d.patch_buckets), patch_dim), jnp.float32),
        "image_grid_thw": s((micro, d.max_images, 3)), "example_index": s((micro,), jnp.int32),
    }


def dry_run(cfg: TrainConfig, mesh) -> str:
    model_config = _config(cfg.model.init_from, cfg.model.preset)
    o = cfg.objective
    obj = ObjectiveConfig(
        kind=o.kind, block_size=o.block_size,
        noise=NoiseConfig(mask_token_id=o.mask_token_id, pad_token_id=o.pad_token_id,
                          replace_bound=min(o.replace_bound, model_config.text.vocab_size)),
        clean_sees_noisy=o.clean_sees_noisy, teacher_block_size=o.teacher_block_size, top_k=o.top_k,
        remat_policy=cfg.model.remat_policy, compute_dtype=cfg.model.compute_dtype,
    )
    teacher_config = _config(o.teacher_init_from, "8b") if o.kind == "swd" else None
    params = jax.eval_shape(lambda: init_params(model_config, jax.random.key(0), cfg.model.param_dtype))
    p_shard = param_shardings(params, mesh)
    tx, schedules = make_optimizer(cfg.optim, cfg.steps, params)
    state = jax.eval_shape(lambda p: init_state(p, tx, 0), params)
    from bard_jax.train.loop import state_shardings

    s_shard = state_shardings(state, p_shard, mesh)
    teacher = teacher_shard = None
    if teacher_config is not None:
        teacher = jax.eval_shape(lambda: init_params(teacher_config, jax.random.key(0), cfg.model.compute_dtype))
        teacher_shard = param_shardings(teacher, mesh)
    accum = cfg.data.global_batch_size // cfg.data.micro_batch_size
    batch = abstract_batch(cfg, accum, cfg.data.micro_batch_size, model_config.vision.patch_dim)
    b_shard = {k: NamedSharding(mesh, PartitionSpec(None, None, ("data", "fsdp")) if k == "positions" else
                                PartitionSpec(None, ("data", "fsdp"))) for k in batch}

    def loss(p, micro, t, n):
        return loss_fn(p, micro, jax.random.key(0), t, model_config=model_config, obj=obj, global_num_samples=n,
                       teacher_config=teacher_config)

    step = make_train_step(loss, tx, schedules, global_batch_size=cfg.data.global_batch_size,
                           trainable=trainable_mask(cfg.optim, params))
    compiled = jax.jit(step, in_shardings=(s_shard, b_shard, teacher_shard),
                       out_shardings=(s_shard, replicated(mesh)), donate_argnums=(0,)).lower(
        state, batch, teacher).compile()
    mem = compiled.memory_analysis()
    lines = [
        f"dry run of {cfg.name}: mesh {dict(mesh.shape)} ({mesh.devices.size} devices, "
        f"{jax.devices()[0].platform}); objective {o.kind} b={o.block_size}"
        + (f", teacher b={o.teacher_block_size}" if teacher is not None else ""),
        f"  micro-batch {cfg.data.micro_batch_size} x {accum} accumulation steps, tokens per sample "
        f"{max(cfg.data.length_buckets)}, remat {cfg.model.remat_policy}, compute {cfg.model.compute_dtype}",
        f"  per device: params {per_device_bytes(params, p_shard) / GiB:.2f} GiB, optimizer state "
        f"{per_device_bytes(state.opt_state, s_shard.opt_state) / GiB:.2f} GiB"
        + (f", teacher {per_device_bytes(teacher, teacher_shard) / GiB:.2f} GiB" if teacher is not None else ""),
    ]
    if mem is not None:
        lines.append(f"  compiled step per device: temporaries (activations) {mem.temp_size_in_bytes / GiB:.2f} GiB, "
                     f"arguments {mem.argument_size_in_bytes / GiB:.2f} GiB, outputs "
                     f"{mem.output_size_in_bytes / GiB:.2f} GiB")
    return "\n".join(lines)
