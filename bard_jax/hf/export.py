"""Export our parameter tree as an HF directory that transformers' `from_pretrained` loads (no torch).

The layout follows what transformers 5.x `save_pretrained` writes, so an HF -> ours -> HF round trip gives the
same tensors (bitwise) under the same names: tensors in state-dict order, greedy sharding at `max_shard_bytes`
(`model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`), each file's header sorted by name, tied
heads not written, config.json in the source's dialect and model_type. Tensors are streamed to disk in row chunks
of at most 64 MB, so export holds no second copy of the weights.
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

from bard_jax.config import ModelConfig
from bard_jax.hf.common import (
    CheckpointError,
    atomic_dir,
    check_tree,
    copy_side_files,
    parse_size,
    problems_error,
    progress,
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
    The directory is written under a temporary name and renamed at the end.
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
            for fname, items in shards.items():
                _write_safetensors(os.path.join(tmp, fname), params, items, advance)
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


def _write_safetensors(path: str, params: dict[str, Any], items: list[tuple[str, Entry, int]], advance) -> None:
    """One safetensors file, header first, then each tensor streamed in row chunks.

    Layout as the reference writer produces it: `__metadata__` first, tensors by descending dtype size then name,
    header padded with spaces to a multiple of 8 bytes.
    """
    def dtype_of(e: Entry) -> np.dtype:
        return np.dtype(get_path(params, e.path).dtype)

    items = sorted(items, key=lambda it: (-dtype_of(it[1]).itemsize, it[0]))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, e, _ in items:
        nbytes = math.prod(e.hf_shape) * dtype_of(e).itemsize
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype_of(e)], "shape": list(e.hf_shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, e, layer in items:
            for chunk in _hf_chunks(get_path(params, e.path), e, layer):
                f.write(chunk.reshape(-1).view(np.uint8))
                advance(chunk.nbytes)
        if f.tell() != 8 + len(blob) + offset:  # a short write would give a file that looks valid but is not
            raise CheckpointError(f"{path}: wrote {f.tell()} bytes, expected {8 + len(blob) + offset}")


def _hf_chunks(leaf: Any, e: Entry, layer: int) -> Iterator[np.ndarray]:
    """One HF tensor (layer `layer` of our parameter) as C-contiguous row chunks [rows, prod(hf_shape[1:])]."""
    rows = e.hf_shape[0]
    cols = math.prod(e.hf_shape[1:])
    step = max(1, CHUNK_BYTES // max(1, cols * np.dtype(leaf.dtype).itemsize))
    lead = (layer,) if e.layers else ()
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        if e.transform == "copy":  # our layout == HF layout: HF rows are our leading axis
            part = np.asarray(leaf[lead + (slice(r0, r1),)])
        else:  # linear / conv: our kernel is [in..., out]; HF rows are our last axis
            part = np.asarray(leaf[lead + (slice(None), slice(r0, r1))]).T
        yield np.ascontiguousarray(part).reshape(r1 - r0, cols)
