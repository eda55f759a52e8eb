"""Our converted format: orbax checkpoints of the parameter tree plus the configs and tokenizer files.

    DIR/bard_jax_config.json    {"format": "bard_jax", "version": 2, "config": ours, "hf_config": the original
                                 config.json dict (export writes its dialect and model_type back), "dtype"}
    DIR/params/part-00000/ ...  orbax PyTree checkpoints (zarr v2, no OCDBT); each holds some parameters under
                                 their full nested paths (the union is the params tree), in chunks of <= 64 MB
    DIR/tokenizer*.json, ...    tokenizer / processor / generation files copied from the source

Why parts: an orbax save copies everything the call touches once more, so one call over the whole tree needs the
weights twice. Parts of at most 256 MB (a larger parameter alone) bound that transient, and `convert_hf` streams
HF tensors into parts without ever holding the model. Any orbax restore reads the parts; `load_converted` reads
the zarr arrays itself, chunk by chunk, to keep its peak memory at the weights plus one parameter.
Written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import jax
import numpy as np

from bard_jax.atomic_dir import atomic_dir
from bard_jax.config import ConfigError, ModelConfig
from bard_jax.hf.common import (
    CONVERTED_MARKER,
    CheckpointError,
    check_tree,
    copy_side_files,
    problems_error,
    progress,
    release_memory,
    resolve_dtype,
)
from bard_jax.hf.dirs import check_output_dir, check_weights_dir
from bard_jax.hf.load import HFCheckpoint, ShardingFn, assemble, check_checkpoint, place, read_hf_config
from bard_jax.hf.table import Entry, get_path, name_table, set_path

FORMAT_VERSION = 2
PART_BYTES = 256 * 2**20
CHUNK_BYTES = 64 * 2**20


def is_converted_dir(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), CONVERTED_MARKER))


def _parts(table: list[Entry], nbytes: dict[tuple[str, ...], int]) -> list[list[Entry]]:
    """Largest first, packed greedily into parts of at most PART_BYTES (a larger parameter gets its own)."""
    parts: list[list[Entry]] = []
    size = PART_BYTES
    for e in sorted(table, key=lambda e: -nbytes[e.path]):
        if size + nbytes[e.path] > PART_BYTES:
            parts.append([])
            size = 0
        parts[-1].append(e)
        size += nbytes[e.path]
    return parts


class _QuietOcdbtMerge(logging.Filter):
    """Without OCDBT orbax logs a warning per save that it found no OCDBT files to merge: expected, drop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Skipping merge of OCDBT checkpoints" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietOcdbtMerge())


def _save_part(params_dir: str, k: int, tree: dict[str, Any]) -> None:
    import orbax.checkpoint as ocp

    save_args = jax.tree_util.tree_map(lambda _: ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES), tree)
    # One writer: in a multi-process run only the calling process saves (the train export gathers to process 0),
    # so orbax must not wait at barriers for processes that never make this call.
    me = jax.process_index()
    single = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    # Plain zarr v2 arrays (no OCDBT): one directory per array, which load_converted reads chunk by chunk.
    handler = ocp.PyTreeCheckpointHandler(use_ocdbt=False, use_zarr3=False, multiprocessing_options=single)
    with ocp.Checkpointer(handler, multiprocessing_options=single) as ckptr:
        ckptr.save(os.path.join(params_dir, f"part-{k:05d}"), args=ocp.args.PyTreeSave(tree, save_args=save_args))


def _write_meta(out: str, config: ModelConfig, raw: dict[str, Any] | None, dtypes: set[str],
                training: dict[str, Any] | None = None) -> None:
    meta = {
        "format": "bard_jax",
        "version": FORMAT_VERSION,
        "config": config.to_dict(),
        "hf_config": config.to_hf_dict(base=raw),
        "dtype": dtypes.pop() if len(dtypes) == 1 else "mixed",
    }
    if training is not None:  # the training export's record (not read back by the loader)
        meta["training"] = training
    with open(os.path.join(out, CONVERTED_MARKER), "w") as f:
        json.dump(meta, f, indent=2)


def save_converted(
    params: dict[str, Any],
    config: ModelConfig,
    raw_hf_config: dict[str, Any] | None,
    out_dir: str | os.PathLike,
    side_files_from: str | os.PathLike | None = None,
    training: dict[str, Any] | None = None,
) -> str:
    """Write our format to `out_dir` (atomically, replacing whatever is there: the training export); returns its path.

    Written by the calling process alone (in a multi-process run: one process, holding the whole tree).
    params: our tree (jax or numpy arrays, any sharding). raw_hf_config: the original config.json dict (None: a
    fresh 5.x qwen3_vl config). side_files_from: a directory whose tokenizer / processor files are copied along.
    training: JSON values recorded under "training" in the marker file (the training export: how it was trained).
    """
    table = name_table(config)
    problems = check_tree(params, table)
    if problems:
        raise problems_error(os.fspath(out_dir), "parameters do not match the config", problems)
    leaves = {e.path: get_path(params, e.path) for e in table}
    nbytes = {p: math.prod(x.shape) * np.dtype(x.dtype).itemsize for p, x in leaves.items()}
    with atomic_dir(out_dir) as tmp:
        os.makedirs(os.path.join(tmp, "params"))
        with progress(sum(nbytes.values()), "saving") as advance:
            for k, part in enumerate(_parts(table, nbytes)):
                tree: dict[str, Any] = {}
                for e in part:
                    set_path(tree, e.path, leaves[e.path])
                _save_part(os.path.join(tmp, "params"), k, tree)
                del tree
                release_memory()
                advance(sum(nbytes[e.path] for e in part))
        _write_meta(tmp, config, raw_hf_config, {np.dtype(x.dtype).name for x in leaves.values()}, training)
        copy_side_files(side_files_from, tmp)
    return os.fspath(out_dir)


def convert_hf(src: str | os.PathLike, out_dir: str | os.PathLike, dtype: Any = None, *, overwrite: bool = False
               ) -> str:
    """HF directory -> our format, streaming: holds at most one part (<= 256 MB, or one larger parameter) at a time.

    dtype: "float32" / "bfloat16" / "float16", or None / "keep" for each tensor's stored dtype. Tokenizer and
    processor files are copied along. Raises CheckpointError / ConfigError before anything is written.
    `out_dir` must be missing, empty, or (with `overwrite`) an earlier output of this conversion; it must not be,
    contain or lie inside `src` (`check_output_dir`: this is convert/hf_to_jax.py's guard; `save_converted`, the
    training export, replaces its destination unchecked).
    """
    src = os.fspath(src)
    check_weights_dir(src)
    check_output_dir(src, out_dir, overwrite=overwrite, kind="bard_jax")
    config, raw = read_hf_config(src)
    target = resolve_dtype(dtype)
    with HFCheckpoint(src) as ckpt:
        table = check_checkpoint(ckpt, config)
        dtypes = {e.path: target or np.result_type(*[ckpt.info(n)["dtype"] for n in e.hf_names]) for e in table}
        nbytes = {e.path: math.prod(e.shape) * dtypes[e.path].itemsize for e in table}
        with atomic_dir(out_dir) as tmp:
            os.makedirs(os.path.join(tmp, "params"))
            with progress(sum(nbytes.values()), f"converting {os.path.basename(src.rstrip('/'))}") as advance:
                for k, part in enumerate(_parts(table, nbytes)):
                    tree: dict[str, Any] = {}
                    for e in part:
                        # On the device (freeing the host buffer first): orbax saves a jax array with one transient
                        # copy, a numpy array with two.
                        set_path(tree, e.path, place(assemble(ckpt, e, target), None))
                        release_memory()
                    _save_part(os.path.join(tmp, "params"), k, tree)
                    del tree
                    release_memory()
                    advance(sum(nbytes[e.path] for e in part))
            _write_meta(tmp, config, raw, {d.name for d in dtypes.values()})
            copy_side_files(src, tmp)
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
    if "config" in meta and meta["config"] != json.loads(json.dumps(config.to_dict())):
        raise ConfigError(f"{marker}: 'config' and 'hf_config' describe different models (was the file edited?)")
    return config, raw


def _array_dirs(params_dir: str) -> tuple[dict[tuple[str, ...], str], list[str]]:
    """{parameter path: its zarr array directory} over all parts (orbax names an array directory by the keys
    joined with '.'), and the problems found (no parts, unfinished parts, a parameter stored twice)."""
    found: dict[tuple[str, ...], str] = {}
    problems = []
    parts = sorted(d for d in os.listdir(params_dir) if d.startswith("part-"))
    if not parts:
        problems.append(f"{params_dir}: no part-* checkpoints")
    for part in parts:
        pdir = os.path.join(params_dir, part)
        if not os.path.isfile(os.path.join(pdir, "commit_success.txt")):
            problems.append(f"{pdir}: unfinished orbax checkpoint (no commit_success.txt)")
        for name in sorted(os.listdir(pdir)):
            adir = os.path.join(pdir, name)
            if os.path.isfile(os.path.join(adir, ".zarray")):
                key = tuple(name.split("."))
                if key in found:
                    problems.append(f"parameter {'/'.join(key)} stored twice ({found[key]} and {adir})")
                found[key] = adir
    return found, problems


def _open_array(adir: str) -> Any:
    import tensorstore as ts

    return ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": adir}}, open=True).result()


def load_converted(
    path: str | os.PathLike, dtype: Any = "float32", sharding_fn: ShardingFn | None = None
) -> tuple[dict[str, Any], ModelConfig, dict[str, Any]]:
    """Read our format back: (params, config, raw HF config dict).

    dtype: "float32" / "bfloat16" / "float16", or None / "keep" for the saved dtype. sharding_fn(path_tuple, shape)
    -> Sharding | None: a sharded parameter is built with `jax.make_array_from_callback`, each device reading only
    its own slice from disk (never whole on one device first).
    The zarr arrays orbax wrote are read with tensorstore, chunk by chunk into one host buffer per parameter,
    largest first (as in load.py): orbax's own restore stages every array of a call twice at once.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"converted directory not found: {path}")
    config, raw = read_converted_config(path)
    params_dir = os.path.join(path, "params")
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"{path}: missing params/ directory (an interrupted copy?)")
    found, problems = _array_dirs(params_dir)
    arrays: dict[str, Any] = {}
    for key, adir in found.items():
        try:
            set_path(arrays, key, _open_array(adir))
        except Exception as e:  # tensorstore raises ValueError / OSError variants; name the array
            problems.append(f"{adir}: unreadable zarr array ({type(e).__name__}: {e})")
    table = name_table(config)
    problems += check_tree(arrays, table)
    if problems:
        raise problems_error(params_dir, "parameters do not match bard_jax_config.json", problems)
    target = resolve_dtype(dtype)
    dtypes = {e.path: target or np.dtype(get_path(arrays, e.path).dtype.numpy_dtype) for e in table}
    params: dict[str, Any] = {}
    with progress(sum(math.prod(e.shape) * dtypes[e.path].itemsize for e in table),
                  f"loading {os.path.basename(path.rstrip('/'))}") as advance:
        for e in sorted(table, key=lambda e: -math.prod(e.shape)):
            arr, dt = get_path(arrays, e.path), dtypes[e.path]
            sharding = sharding_fn(e.path, e.shape) if sharding_fn else None
            try:
                if sharding is None:
                    value = place(_read_whole(arr, dt), None)
                else:
                    value = jax.make_array_from_callback(
                        e.shape, sharding, lambda index, a=arr, d=dt: a[index].read().result().astype(d, copy=False)
                    ).block_until_ready()
            except Exception as err:
                raise CheckpointError(f"{found[e.path]}: cannot read ({type(err).__name__}: {err})") from err
            set_path(params, e.path, value)
            release_memory()  # the host buffer sits in device_put's reference cycle until collected
            advance(math.prod(e.shape) * dt.itemsize)
    return params, config, raw


def _read_whole(arr: Any, dtype: np.dtype) -> np.ndarray:
    """The whole array in one host buffer of `dtype`, filled one stored chunk-row at a time."""
    import tensorstore as ts

    buf = np.empty(arr.shape, dtype)
    if not arr.shape:
        buf[...] = arr.read().result()
        return buf
    step = arr.chunk_layout.read_chunk.shape[0] or arr.shape[0]
    for r0 in range(0, arr.shape[0], step):
        r1 = min(arr.shape[0], r0 + step)
        if dtype == arr.dtype.numpy_dtype:  # decode straight into the buffer
            ts.array(buf[r0:r1]).write(arr[r0:r1]).result()
        else:
            buf[r0:r1] = arr[r0:r1].read().result()
    return buf
