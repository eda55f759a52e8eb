"""The run's mesh from the recipe's `mesh` section, and the settings that depend on it.

`run_mesh` lays the devices out as `mesh.data x mesh.fsdp x mesh.tensor` (one entry may be -1: the devices the
others leave) and names the recipe keys when they do not fit the devices. `resolve_for_mesh` turns a micro-batch of
-1 ("one example per batch shard") into its size on that mesh and checks that every division the step needs holds:
the batch shards (data x fsdp) divide the micro-batch, the micro-batch divides the global batch, the tensor axis
divides every attention head count. Each failure is one `InputError` naming the key and what would work.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from bard_jax.errors import InputError
from bard_jax.sharding import batch_shards, check_mesh_divides, make_mesh
from bard_jax.train.config import TrainConfig


def mesh_shape(cfg: TrainConfig, devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) of `cfg.mesh` on `devices` devices, a -1 resolved; InputError naming the keys when the
    sizes do not fit the devices."""
    shape = list(cfg.mesh.shape())
    known = int(np.prod([s for s in shape if s != -1]))
    fits = devices % known == 0 if -1 in shape else known == devices
    if not fits:
        need = "a product that divides" if -1 in shape else "a product equal to"
        raise InputError(
            f"mesh.data x mesh.fsdp x mesh.tensor = {' x '.join(map(str, shape))} does not fit the {devices} "
            f"devices: the sizes need {need} {devices} (-1 takes the devices the others leave; the default "
            f"1 x -1 x 1 puts them all on fsdp)")
    if -1 in shape:
        shape[shape.index(-1)] = devices // known
    return tuple(shape)


def micro_batch_on(cfg: TrainConfig, shards: int) -> int:
    """`data.micro_batch_size` on a mesh of `shards` batch shards (data x fsdp): -1 is one example per shard."""
    return shards if cfg.data.micro_batch_size == -1 else cfg.data.micro_batch_size


def run_mesh(cfg: TrainConfig, devices: Sequence[Any] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh of `cfg.mesh` over `devices` (default: all)."""
    devices = list(devices if devices is not None else jax.devices())
    return make_mesh(mesh_shape(cfg, len(devices)), devices)


def resolve_for_mesh(cfg: TrainConfig, mesh: Mesh, heads: Mapping[str, int] | None = None) -> TrainConfig:
    """`cfg` with `data.micro_batch_size` -1 replaced by the mesh's batch shards, after checking that the mesh
    divides the micro-batch (and, given `heads`, the attention heads) and that the micro-batch divides the global
    batch. `heads` maps a name ("text query heads", ...) to a count, as `setup.head_counts` gives them."""
    d = cfg.data
    micro = micro_batch_on(cfg, batch_shards(mesh))
    check_mesh_divides(mesh, ("data.micro_batch_size", micro), {})
    tensor = mesh.shape["tensor"]
    uneven = [f"{what} ({n})" for what, n in (heads or {}).items() if n % tensor]
    if uneven:
        common = math.gcd(*(heads or {}).values())
        ok = [t for t in range(1, mesh.devices.size + 1) if common % t == 0 and mesh.devices.size % t == 0]
        raise InputError(
            f"mesh.tensor {tensor} does not divide the {', '.join(uneven)}: attention is split over the tensor axis "
            f"by whole heads; use mesh.tensor in {ok}")
    if d.global_batch_size % micro:
        what = f"-1 = {micro}, one example per batch shard" if d.micro_batch_size == -1 else str(micro)
        raise InputError(
            f"data.global_batch_size {d.global_batch_size} is not a multiple of data.micro_batch_size ({what}): each "
            f"update accumulates whole micro-batches; use a global batch that is a multiple of {micro}")
    return dataclasses.replace(cfg, data=dataclasses.replace(d, micro_batch_size=micro))
