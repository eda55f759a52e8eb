"""Our converted format: an orbax checkpoint of the parameter tree plus the configs and tokenizer files.

    DIR/params/                 orbax (OCDBT) checkpoint of the nested params dict, in the saved dtype
    DIR/bard_jax_config.json    {"format", "version", "config" (ours), "hf_config" (the original config.json dict,
                                 so export writes its dialect and model_type back), "dtype"}
    DIR/tokenizer*.json, ...    tokenizer / processor / generation files copied from the source

Written under a temporary name and renamed at the end; read back straight into the requested shardings.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
from typing import Any

import jax
import numpy as np

from bard_jax.config import ConfigError, ModelConfig
from bard_jax.hf.common import CheckpointError, atomic_dir, check_tree, copy_side_files, problems_error, resolve_dtype
from bard_jax.hf.load import ShardingFn
from bard_jax.hf.table import flatten, name_table, set_path

CONVERTED_MARKER = "bard_jax_config.json"
FORMAT_VERSION = 1
# Restoring a large tree in one orbax call stages all of it on the host before placing it (the weights twice);
# above this size parameters are restored one by one, largest first.
ONE_CALL_MAX_BYTES = 256 * 2**20


def is_converted_dir(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), CONVERTED_MARKER))


def save_converted(
    params: dict[str, Any],
    config: ModelConfig,
    raw_hf_config: dict[str, Any] | None,
    out_dir: str | os.PathLike,
    side_files_from: str | os.PathLike | None = None,
) -> str:
    """Write our format to `out_dir` (atomically); returns its path.

    params: our tree (jax or numpy arrays, any sharding). raw_hf_config: the original config.json dict (None: a
    fresh 5.x qwen3_vl config). side_files_from: a directory whose tokenizer / processor files are copied along.
    """
    import orbax.checkpoint as ocp

    problems = check_tree(params, name_table(config))
    if problems:
        raise problems_error(os.fspath(out_dir), "parameters do not match the config", problems)
    dtypes = {np.dtype(x.dtype).name for x in jax.tree_util.tree_leaves(params)}
    with atomic_dir(out_dir) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(tmp, "params"), params)
            ckptr.wait_until_finished()
        meta = {
            "format": "bard_jax",
            "version": FORMAT_VERSION,
            "config": dataclasses.asdict(config),
            "hf_config": config.to_hf_dict(base=raw_hf_config),
            "dtype": dtypes.pop() if len(dtypes) == 1 else "mixed",
        }
        with open(os.path.join(tmp, CONVERTED_MARKER), "w") as f:
            json.dump(meta, f, indent=2)
        copy_side_files(side_files_from, tmp)
    return os.fspath(out_dir)


def read_converted_config(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, HF config dict) of a converted directory."""
    marker = os.path.join(os.fspath(path), CONVERTED_MARKER)
    try:
        with open(marker) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{marker}: unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict) or meta.get("format") != "bard_jax" or "hf_config" not in meta:
        raise CheckpointError(f"{marker}: not a bard_jax config (expected format 'bard_jax' and an hf_config)")
    if meta.get("version", 1) > FORMAT_VERSION:
        raise CheckpointError(f"{marker}: format version {meta['version']} is newer than this code ({FORMAT_VERSION})")
    raw = meta["hf_config"]
    config = ModelConfig.from_hf_dict(raw, source=f"{marker} (hf_config)")
    if "config" in meta and meta["config"] != json.loads(json.dumps(dataclasses.asdict(config))):
        raise ConfigError(f"{marker}: 'config' and 'hf_config' describe different models (was the file edited?)")
    return config, raw


def load_converted(
    path: str | os.PathLike, dtype: Any = "float32", sharding_fn: ShardingFn | None = None
) -> tuple[dict[str, Any], ModelConfig, dict[str, Any]]:
    """Read our format back: (params, config, raw HF config dict).

    dtype: "float32" / "bfloat16" / "float16", or None / "keep" for the saved dtype. sharding_fn(path_tuple, shape)
    -> Sharding | None: each array is restored directly into its sharding (each device reads its own slice), never
    whole on one device first.
    """
    import orbax.checkpoint as ocp

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"converted directory not found: {path}")
    config, raw = read_converted_config(path)
    params_dir = os.path.join(path, "params")
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"{path}: missing params/ directory (an interrupted copy?)")
    ckptr = ocp.PyTreeCheckpointer()
    try:
        stored = ckptr.metadata(params_dir).item_metadata.tree
    except Exception as e:  # orbax raises many types; name the directory
        raise CheckpointError(f"{params_dir}: unreadable orbax checkpoint ({type(e).__name__}: {e})") from e
    table = name_table(config)
    problems = check_tree(stored, table)
    if problems:
        raise problems_error(params_dir, "parameters do not match bard_jax_config.json", problems)
    target = resolve_dtype(dtype)
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    stored_leaves = flatten(stored)
    specs = {}
    for e in table:
        st_dtype = np.dtype(stored_leaves[e.path].dtype)
        sharding = (sharding_fn(e.path, e.shape) if sharding_fn else None) or default
        specs[e.path] = ocp.ArrayRestoreArgs(sharding=sharding, global_shape=e.shape, dtype=target or st_dtype)
    nbytes = {p: math.prod(a.global_shape) * np.dtype(a.dtype).itemsize for p, a in specs.items()}
    order = sorted(specs, key=lambda p: -nbytes[p])
    groups = [order] if sum(nbytes.values()) <= ONE_CALL_MAX_BYTES else [[p] for p in order]
    params: dict[str, Any] = {}
    for group in groups:
        item: dict[str, Any] = {}
        args: dict[str, Any] = {}
        for p in group:
            a = specs[p]
            set_path(item, p, jax.ShapeDtypeStruct(a.global_shape, a.dtype, sharding=a.sharding))
            set_path(args, p, a)
        try:
            got = ckptr.restore(params_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=args,
                                                                        partial_restore=True))
        except Exception as e:
            names = ", ".join("/".join(p) for p in group[:3]) + (" ..." if len(group) > 3 else "")
            raise CheckpointError(f"{params_dir}: cannot restore {names} ({type(e).__name__}: {e})") from e
        for p, leaf in flatten(got).items():
            set_path(params, p, leaf)
        del got
        gc.collect()  # release orbax's host staging buffers before the next parameter
    return params, config, raw
