"""Export our parameter tree as an HF directory that transformers' `from_pretrained` loads (no torch).

The layout follows what transformers 5.x `save_pretrained` writes, so an HF -> ours -> HF round trip gives the
same tensors (bitwise) under the same names: tensors in state-dict order, greedy sharding at `max_shard_bytes`
(`model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`), each file's header sorted by name, tied
heads not written, config.json in the source's dialect and model_type. Tensors are streamed to disk in row chunks
of at most 64 MB, parameter by parameter, so export holds no second copy of the weights.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from typing import Any

import jax
import ml_dtypes
import numpy as np

from bard_jax.atomic_dir import atomic_dir
from bard_jax.config import ModelConfig
from bard_jax.hf.common import (
    CheckpointError,
    check_tree,
    copy_side_files,
    parse_size,
    problems_error,
    progress,
    release_memory,
)
from bard_jax.hf.table import Entry, flatten, get_path, hf_tensor_order, name_table
from bard_jax.safetensors_io import NAMES as SAFETENSORS_DTYPES

CHUNK_BYTES = 64 * 2**20
FLOAT_DTYPES = {np.dtype(t) for t in (np.float32, ml_dtypes.bfloat16, np.float16, np.float64)}


def export_hf(
    params: dict[str, Any],
    config: ModelConfig,
    raw_hf_config: dict[str, Any] | None,
    out_dir: str | os.PathLike,
    max_shard_bytes: int | str = "5GB",
    side_files_from: str | os.PathLike | None = None,
) -> str:
    """Write `out_dir` as an HF checkpoint directory; returns its path.

    params: our tree (jax or numpy arrays; each tensor keeps its dtype). raw_hf_config: the original config.json
    dict (keeps its dialect, model_type and unknown keys; None writes a fresh 5.x config). max_shard_bytes: e.g.
    "5GB", "500MB" or an int. side_files_from: a directory whose tokenizer / processor files are copied along.
    The directory is written under a temporary name and renamed at the end; whatever was at `out_dir` is replaced
    (the training export relies on it; convert/jax_to_hf.py calls `check_output_dir` first).
    """
    table = name_table(config)
    problems = check_tree(params, table)
    leaves = flatten(params)
    for e in table:
        leaf = leaves.get(e.path)
        if leaf is None:
            continue
        if np.dtype(leaf.dtype) not in FLOAT_DTYPES:
            problems.append(f"parameter {e.key} has dtype {leaf.dtype}; export writes float32/bfloat16/float16")
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            problems.append(f"parameter {e.key} is not fully addressable here (gather it first, e.g. "
                            "multihost_utils.process_allgather)")
    if problems:
        raise problems_error(os.fspath(out_dir), "cannot export these parameters", problems)
    order = hf_tensor_order(table)
    sizes = {name: math.prod(e.hf_shape) * np.dtype(get_path(params, e.path).dtype).itemsize for name, e, _ in order}
    shards = _split(order, sizes, parse_size(max_shard_bytes))
    total = sum(sizes.values())
    with atomic_dir(out_dir) as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            f.write(json.dumps(_hf_config(params, config, raw_hf_config), indent=2, sort_keys=True) + "\n")
        with progress(total, "exporting") as advance:
            _write_files(tmp, params, table, shards, advance)
        if len(shards) > 1:
            index = {
                "metadata": {"total_parameters": sum(math.prod(e.shape) for e in table), "total_size": total},
                "weight_map": {name: fname for fname, items in shards.items() for name, _, _ in items},
            }
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
        copy_side_files(side_files_from, tmp)
    return os.fspath(out_dir)


def _hf_config(params: dict[str, Any], config: ModelConfig, raw: dict[str, Any] | None) -> dict[str, Any]:
    d = config.to_hf_dict(base=raw)
    dtypes = {np.dtype(x.dtype).name for x in jax.tree_util.tree_leaves(params)}
    name = dtypes.pop() if len(dtypes) == 1 else "float32"
    # transformers 4.x writes `torch_dtype`, 5.x `dtype`: update whichever the source used.
    keys = [k for k in ("dtype", "torch_dtype") if k in d] or ["dtype"]
    for k in keys:
        d[k] = name
    return d


def _split(order: list[tuple[str, Entry, int]], sizes: dict[str, int], limit: int) -> dict[str, list]:
    """File name -> tensors, by the greedy rule of huggingface_hub (what save_pretrained uses): walk in
    state-dict order, start a new shard when the next tensor would overflow it; a tensor above the limit gets a
    shard of its own."""
    shards: list[list] = []
    current: list = []
    size = 0
    for item in order:
        n = sizes[item[0]]
        if n > limit:
            shards.append([item])
            continue
        if current and size + n > limit:
            shards.append(current)
            current, size = [], 0
        current.append(item)
        size += n
    if current or not shards:
        shards.append(current)
    if len(shards) == 1:
        return {"model.safetensors": shards[0]}
    return {f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors": s for k, s in enumerate(shards)}


def _headers(params: dict[str, Any], shards: dict[str, list]) -> tuple[dict[str, bytes], dict[str, tuple[str, int]]]:
    """Per file its header bytes, and per HF tensor (file, absolute byte offset of its data).

    Layout as the reference writer produces it: `__metadata__` first, tensors by descending dtype size then name,
    the header padded with spaces to a multiple of 8 bytes.
    """
    headers, where = {}, {}
    for fname, items in shards.items():
        dtypes = {name: np.dtype(get_path(params, e.path).dtype) for name, e, _ in items}
        items = sorted(items, key=lambda it: (-dtypes[it[0]].itemsize, it[0]))
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offsets, offset = {}, 0
        for name, e, _ in items:
            nbytes = math.prod(e.hf_shape) * dtypes[name].itemsize
            header[name] = {"dtype": SAFETENSORS_DTYPES[dtypes[name]], "shape": list(e.hf_shape),
                            "data_offsets": [offset, offset + nbytes]}
            offsets[name] = offset
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        headers[fname] = struct.pack("<Q", len(blob)) + blob
        where.update({name: (fname, 8 + len(blob) + off) for name, off in offsets.items()})
    return headers, where


def _write_files(tmp: str, params: dict[str, Any], table: list[Entry], shards: dict[str, list], advance) -> None:
    """Write all files at once, parameter by parameter (largest first), each tensor at its offset.

    Parameter-major so that a parameter living on an accelerator is copied to the host once (one parameter at a
    time), not once per layer; on CPU `np.asarray` is a view and nothing is copied.
    """
    headers, where = _headers(params, shards)
    handles = {fname: open(os.path.join(tmp, fname), "wb") for fname in shards}
    try:
        for fname, fh in handles.items():
            fh.write(headers[fname])
        for e in sorted(table, key=lambda e: -math.prod(e.shape)):
            host = np.asarray(get_path(params, e.path))
            for layer, name in enumerate(e.hf_names):
                fname, offset = where[name]
                handles[fname].seek(offset)
                for chunk in _hf_chunks(host, e, layer):
                    handles[fname].write(chunk.reshape(-1).view(np.uint8))
                    advance(chunk.nbytes)
            del host
            release_memory()
    finally:
        for fh in handles.values():
            fh.close()
    for fname, items in shards.items():  # a short write would leave a file that looks valid but is not
        want = max(where[n][1] + math.prod(e.hf_shape) * np.dtype(get_path(params, e.path).dtype).itemsize
                   for n, e, _ in items) if items else len(headers[fname])
        got = os.path.getsize(os.path.join(tmp, fname))
        if got != want:
            raise CheckpointError(f"{os.path.join(tmp, fname)}: wrote {got} bytes, expected {want}")


def _hf_chunks(leaf: np.ndarray, e: Entry, layer: int) -> Iterator[np.ndarray]:
    """One HF tensor (layer `layer` of our parameter) as C-contiguous row chunks [rows, prod(hf_shape[1:])]
    (views for copies, one chunk-sized copy for transposes)."""
    rows = e.hf_shape[0]
    cols = math.prod(e.hf_shape[1:])
    step = max(1, CHUNK_BYTES // max(1, cols * np.dtype(leaf.dtype).itemsize))
    lead = (layer,) if e.layers else ()
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        if e.transform == "copy":  # our layout == HF layout: HF rows are our leading axis
            part = leaf[lead + (slice(r0, r1),)]
        else:  # linear / conv: our kernel is [in..., out]; HF rows are our last axis
            part = leaf[lead + (slice(None), slice(r0, r1))].T
        yield np.ascontiguousarray(part).reshape(r1 - r0, cols)
