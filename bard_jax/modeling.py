"""The public model object and forward function: `Model`, `load_pretrained`, `forward`, `init_params`.

Letters: B batch, T tokens, V vocab.
"""

from __future__ import annotations

import functools
import numbers
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bard_jax.config import ModelConfig
from bard_jax.errors import InputError
from bard_jax.model.attention import AttentionConfig, TokenInfo
from bard_jax.model.hidden import hidden_states
from bard_jax.model.inputs import VisionInputs, check_inputs, check_length, shared_vision, text_positions, vision_inputs
from bard_jax.model.positions import vision_patch_metadata
from bard_jax.model.vlm import Qwen3VL

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def resolve_dtype(dtype: Any) -> Any:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise InputError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
        return DTYPES[dtype]
    return jnp.dtype(dtype).type if dtype is not None else None


@flax.struct.dataclass
class Model:
    """Parameters (a nested dict pytree) and the static config. A pytree: pass it straight through `jax.jit`."""

    params: Any
    config: ModelConfig = flax.struct.field(pytree_node=False)
    # Extra files/metadata of the source checkpoint (original HF config dict, source path); not traced.
    source: Any = flax.struct.field(pytree_node=False, default=None)

    @property
    def dtype(self) -> Any:
        return jax.tree_util.tree_leaves(self.params)[0].dtype

    def for_jit(self) -> Model:
        """The model as compiled functions take it: parameters and config. `source` (the checkpoint's path and raw
        HF config) is static pytree data, so leaving it in would compile every function anew for each checkpoint
        of the same architecture."""
        return self if self.source is None else self.replace(source=None)


DEFAULT_ATTENTION = AttentionConfig()


@functools.cache
def network(
    config: ModelConfig,
    dtype: Any = None,
    remat_policy: str = "none",
    return_kv: bool = False,
    clean_sees_noisy: bool = True,
    attention: AttentionConfig = DEFAULT_ATTENTION,
) -> Qwen3VL:
    """The (stateless, hashable) Linen module for a config and compute options (`attention`: which attention
    implementation runs; see `bard_jax.model.attention.AttentionConfig`)."""
    return Qwen3VL(config, dtype, remat_policy, return_kv, clean_sees_noisy, attention)


def init_params(config: ModelConfig, rng: jax.Array, dtype: Any = "float32") -> Any:
    """Random parameters for `config` (tests, demos, benchmarks). Returns the nested params dict."""
    v = config.vision
    side = 2 * v.spatial_merge_size
    grid = np.array([[1, side, side]], np.int32)
    p = side * side
    meta = vision_patch_metadata(
        grid, p, spatial_merge_size=v.spatial_merge_size, num_grid_per_side=v.num_grid_per_side, xp=jnp
    )
    t = p // v.merge_unit + 2
    ids = jnp.full((1, t), config.image_token_id, jnp.int32).at[0, 0].set(0).at[0, -1].set(0)
    pos = jnp.zeros((3, 1, t), jnp.int32)
    info = TokenInfo.causal(jnp.ones((1, t), bool))
    pixels = jnp.zeros((p, v.patch_dim), jnp.float32)
    params = jax.jit(network(config).init)(rng, ids, pos, info, pixels, meta)["params"]
    return jax.tree_util.tree_map(lambda x: x.astype(resolve_dtype(dtype)), params)


def check_model(model: Any) -> None:
    if not isinstance(model, Model):
        raise InputError(f"model must be a bard_jax.Model (from bj.load_pretrained(path) or bj.Model(params, config)), "
                         f"got {type(model).__name__}")


def forward(
    model: Model,
    input_ids: Any,
    *,
    attention_mask: Any = None,
    pixel_values: Any = None,
    image_grid_thw: Any = None,
    pixel_values_videos: Any = None,
    video_grid_thw: Any = None,
    block_size: int | None = None,
) -> jax.Array:
    """Logits [B, T, V] of a full forward.

    block_size=None: token-causal attention (exactly HF Qwen3-VL). block_size=b: the block-causal prompt mask of
    the sampler's prefill (bidirectional inside b-chunks counted from each row's first real token).
    attention_mask [B, T] marks real tokens (left or right padding). Pixel rows come with their grids
    ([I, 3]); rows may be padded at the end (zero-count grid rows and extra pixel rows are ignored).
    Works eagerly and under `jax.jit` (pass `block_size` as static). Bad inputs (ids outside the vocabulary, a mask
    that is not 0/1, placeholder tokens that do not match the grids, ...; see `check_inputs`) raise `InputError`
    before anything is compiled; under the caller's jit only their shapes and dtypes can be checked.
    """
    check_model(model)
    check_inputs(model.config, input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos,
                 video_grid_thw)
    check_length(model.config, np.shape(input_ids)[1])
    if block_size is not None:
        if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 1:
            raise InputError(f"block_size must be None or an int >= 1, got {block_size!r}")
        block_size = int(block_size)
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids, dtype=bool)
    attention_mask = jnp.asarray(attention_mask).astype(bool)
    vis = vision_inputs(model.config, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)
    pixels, meta, num_image_windows = vis if vis is not None else (None, None, 0)
    return _forward_jit(
        model.for_jit(), input_ids, attention_mask, pixels, meta, image_grid_thw, video_grid_thw,
        num_image_windows=num_image_windows, block_size=block_size,
    )


@functools.partial(jax.jit, static_argnames=("num_image_windows", "block_size"))
def _forward_jit(
    model, input_ids, attention_mask, pixels, meta, image_grid_thw, video_grid_thw, *, num_image_windows, block_size
):
    net = network(model.config)
    positions, _ = text_positions(model.config, input_ids, attention_mask, image_grid_thw, video_grid_thw)
    if block_size is None:
        info = TokenInfo.causal(attention_mask)
    else:
        info = TokenInfo.block_causal(attention_mask, block_size)
    vision = None
    if pixels is not None:
        vision = shared_vision(model.config, VisionInputs(pixels, meta, num_image_windows), input_ids)
    hidden, _ = hidden_states(net, model.params, input_ids, positions, info, vision=vision)
    return net.apply({"params": model.params}, hidden, method=Qwen3VL.logits)


def load_pretrained(path: str | os.PathLike, dtype: Any = "float32", mesh: Any = None) -> Model:
    """Load an HF Qwen3-VL / BARD-VL directory or a directory written by `convert/hf_to_jax.py` or training.

    Tensors are streamed one by one into device arrays (sharded over `mesh` by the project's logical-axis rules
    when a mesh is given); the weights are never held twice.
    """
    from bard_jax import hf  # local import: keeps `import bard_jax` light
    from bard_jax.sharding import param_sharding_fn

    if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
        raise InputError(f"load_pretrained: mesh must be a jax.sharding.Mesh (e.g. jax.make_mesh((1, 8, 1), ('data', "
                         f"'fsdp', 'tensor'))) or None, got {type(mesh).__name__} {mesh!r}")
    path = os.fspath(path)
    hf.check_weights_dir(path)  # a training workdir or a wrong path: say what to pass instead
    sharding_fn = param_sharding_fn(mesh) if mesh is not None else None
    if hf.is_converted_dir(path):
        params, config, raw = hf.load_converted(path, dtype=dtype, sharding_fn=sharding_fn)
    else:
        config, raw = hf.read_hf_config(path)
        params = hf.load_hf_params(path, config, dtype=dtype, sharding_fn=sharding_fn)
    return Model(params=params, config=config, source={"path": path, "hf_config": raw})
