"""Meshes and the one table of logical-axis rules.

A mesh has axes (data, fsdp, tensor). Every parameter gets logical axis names from `PARAM_AXES` (matched on its
path, e.g. "language_model/layers/self_attn/q_proj/kernel"); `LOGICAL_RULES` maps logical names to mesh axes.
A mesh axis that does not divide a dimension is dropped for that dimension (the dimension is replicated), so any
model runs on any mesh; the dry run reports what ends up sharded. Two divisions are required instead, by
`check_mesh_divides`: the batch axes must divide the micro-batch (each device gets whole examples) and the tensor axis
the attention heads (each device gets whole heads).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from bard_jax.errors import InputError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axes (a tuple shards over several axes in order).
LOGICAL_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "vis_embed": ("fsdp",),
    "vis_mlp": ("tensor",),
    "layers": (),
    "norm": (),
}

# Activations (`nn.with_logical_constraint` in the models): examples over the batch axes, the MLP's hidden units
# over the tensor axis. Without them XLA's propagation may follow the fsdp-sharded weights instead and keep every
# example of the micro-batch on every device (measured: the swd_b32 step's [layers, B, L, mlp] residuals whole).
ACTIVATION_RULES: tuple[tuple[str, Any], ...] = (
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh):
    """Within it, traced model code constrains its activations by `ACTIVATION_RULES` on `mesh` (outside it the
    constraints are no-ops: single-device code and the samplers are unaffected)."""
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(ACTIVATION_RULES):
        yield


# Parameter path regex -> logical axes of its dims (stacked layer params lead with "layers").
PARAM_AXES: list[tuple[str, tuple[str | None, ...]]] = [
    (r"language_model/embed_tokens/embedding$", ("vocab", "embed")),
    (r"lm_head/kernel$", ("embed", "vocab")),
    (r"language_model/layers/self_attn/q_proj/kernel$", ("layers", "embed", "heads")),
    (r"language_model/layers/self_attn/(k|v)_proj/kernel$", ("layers", "embed", "kv_heads")),
    (r"language_model/layers/self_attn/o_proj/kernel$", ("layers", "heads", "embed")),
    (r"language_model/layers/mlp/(gate|up)_proj/kernel$", ("layers", "embed", "mlp")),
    (r"language_model/layers/mlp/down_proj/kernel$", ("layers", "mlp", "embed")),
    (r"language_model/layers/.*/scale$", ("layers", "norm")),
    (r"language_model/norm/scale$", ("norm",)),
    (r"visual/blocks/attn/qkv/kernel$", ("layers", "vis_embed", "vis_mlp")),
    (r"visual/blocks/attn/proj/kernel$", ("layers", "vis_mlp", "vis_embed")),
    (r"visual/blocks/mlp/linear_fc1/kernel$", ("layers", "vis_embed", "vis_mlp")),
    (r"visual/blocks/mlp/linear_fc2/kernel$", ("layers", "vis_mlp", "vis_embed")),
    (r"visual/merger/linear_fc1/kernel$", ("vis_embed", "vis_mlp")),
    (r"visual/merger/linear_fc2/kernel$", ("vis_mlp", "embed")),
    (r"visual/deepstack_merger_list/linear_fc1/kernel$", ("layers", "vis_embed", "vis_mlp")),
    (r"visual/deepstack_merger_list/linear_fc2/kernel$", ("layers", "vis_mlp", "embed")),
    (r"visual/patch_embed/proj/kernel$", (None, "vis_embed")),
    (r"visual/pos_embed/embedding$", (None, "vis_embed")),
]


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all). One entry may be -1 (fill with the remaining
    devices).

    The devices are laid out by `jax.make_mesh`, which follows the physical topology (on a TPU slice or a GPU host
    the inner axes get the nearest neighbours, so the tensor axis' frequent collectives take the fastest links); a
    plain reshape of the device list would ignore it. The axes are `Auto`: shardings propagate from the parameters
    and the batch, as with `jax.sharding.Mesh`.
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = list(shape)
    if len(shape) != 3:
        raise InputError(f"mesh shape must have 3 entries (data, fsdp, tensor), got {shape}")
    if shape.count(-1) > 1:
        raise InputError(f"at most one mesh entry may be -1, got {shape}")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise InputError(f"mesh {shape} does not divide the {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise InputError(
            f"mesh (data, fsdp, tensor) = {tuple(shape)} needs {int(np.prod(shape))} devices, "
            f"but {len(devices)} are available"
        )
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def batch_shards(mesh: Mesh) -> int:
    """How many ways the example axis is split (the mesh axes of the logical "batch" axis)."""
    return int(np.prod([mesh.shape[ax] for ax in LOGICAL_RULES["batch"]]))


def check_mesh_divides(mesh: Mesh, micro_batch: tuple[str, int], heads: Mapping[str, int]) -> None:
    """InputError unless the mesh can split the work evenly, before anything is placed or compiled.

    `micro_batch` is (its name, for the message; its size): the examples of one micro-batch are split over the batch
    axes (data x fsdp), whole examples per device. `heads` maps a name ("text query heads", ...) to a head count: the
    tensor axis splits attention by heads, and a count it does not divide would leave heads cut across devices or
    (where the rules drop the axis) the projections replicated, silently.
    """
    name, size = micro_batch
    ways = batch_shards(mesh)
    if size % ways:
        raise InputError(
            f"{name} {size} is not a multiple of the mesh's batch shards (data {mesh.shape['data']} x fsdp "
            f"{mesh.shape['fsdp']} = {ways}): each micro-batch is split over them; set {name} to a multiple of "
            f"{ways}"
        )
    tensor = mesh.shape["tensor"]
    uneven = [f"{what} ({n})" for what, n in heads.items() if n % tensor]
    if uneven:
        raise InputError(
            f"the mesh's tensor axis ({tensor}) does not divide the {', '.join(uneven)}: attention is split over it "
            f"by whole heads; use a tensor size that divides every head count"
        )


def path_str(path: tuple[Any, ...]) -> str:
    """'a/b/c' for a tree path of dict keys or strings."""
    parts = []
    for p in path:
        key = getattr(p, "key", getattr(p, "name", p))
        parts.append(str(key))
    return "/".join(parts)


def logical_axes(path: str, ndim: int) -> tuple[str | None, ...]:
    for pattern, axes in PARAM_AXES:
        if re.search(pattern, path):
            if len(axes) != ndim:
                break
            return axes
    if path.startswith("visual/blocks/") or "deepstack_merger_list" in path:
        return ("layers",) + (None,) * (ndim - 1)
    return (None,) * ndim


def spec_for(shape: Sequence[int], axes: Sequence[str | None], mesh: Mesh) -> PartitionSpec:
    """PartitionSpec for a dims' logical axes, dropping mesh axes that do not divide the dimension."""
    used: set[str] = set()
    entries = []
    for dim, name in zip(shape, axes):
        mesh_axes = []
        size = 1
        for ax in LOGICAL_RULES.get(name, ()) if name else ():
            n = mesh.shape[ax]
            if ax in used or n == 1 or dim % (size * n):
                continue
            mesh_axes.append(ax)
            size *= n
        used.update(mesh_axes)
        entries.append(tuple(mesh_axes) if len(mesh_axes) > 1 else (mesh_axes[0] if mesh_axes else None))
    return PartitionSpec(*entries)


def param_sharding_fn(mesh: Mesh) -> Callable[[tuple[Any, ...], Sequence[int]], NamedSharding]:
    """sharding_fn(path, shape) -> NamedSharding for a parameter, by the rules above."""

    def fn(path: tuple[Any, ...], shape: Sequence[int]) -> NamedSharding:
        name = path if isinstance(path, str) else path_str(path)
        return NamedSharding(mesh, spec_for(shape, logical_axes(name, len(shape)), mesh))

    return fn


def param_shardings(params: Any, mesh: Mesh) -> Any:
    """A pytree of NamedSharding matching `params` (arrays or ShapeDtypeStructs)."""
    fn = param_sharding_fn(mesh)
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(p, x.shape), params)


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int = 0) -> NamedSharding:
    """Shard the batch dimension over (data, fsdp), replicate the rest."""
    entries: list[Any] = [None] * ndim
    entries[batch_axis] = ("data", "fsdp")
    return NamedSharding(mesh, PartitionSpec(*entries))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
