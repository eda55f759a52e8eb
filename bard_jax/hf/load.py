"""Streaming load of an HF Qwen3-VL / BARD-VL checkpoint into our parameter tree (no torch, no mmap).

Memory: each parameter is assembled in one host buffer (its final dtype and layout), read from the files in row
chunks of at most 64 MB (a chunk is the only other transient: transposes and dtype casts happen chunk by chunk),
then placed on its device(s), and the host buffer is freed before the next parameter. Parameters go largest
first, so the peak is about the whole model plus the smallest parameter's buffer rather than plus the largest.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from bard_jax.config import ConfigError, ModelConfig
from bard_jax.hf.common import CheckpointError, problems_error, progress, release_memory, resolve_dtype
from bard_jax.hf.table import IGNORED_SUFFIXES, Entry, canonical_name, name_table, set_path
from bard_jax.safetensors_io import SafetensorsError, SafetensorsFile

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
CHUNK_BYTES = 64 * 2**20
HEAD = "lm_head.weight"
ShardingFn = Callable[[tuple[str, ...], tuple[int, ...]], Any]


def read_hf_config(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, the raw config.json dict) of an HF directory. Raises CheckpointError / ConfigError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint directory not found: {path}")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory (pass the checkpoint directory, not a file in it)")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"{path}: no config.json (not an HF checkpoint directory)")
    try:
        with open(cfg_path) as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{cfg_path}: not valid JSON ({e})") from e
    return ModelConfig.from_hf_dict(raw, source=cfg_path), raw


class HFCheckpoint:
    """The safetensors files of one HF directory: canonical tensor name -> (file, name in the file).

    Opening parses every header (never the data) and collects every unreadable file / inconsistent index entry
    into one CheckpointError.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.tensors: dict[str, tuple[SafetensorsFile, str]] = {}
        self._handles: dict[str, Any] = {}
        problems: list[str] = []
        files, weight_map = self._file_list(problems)
        opened: dict[str, SafetensorsFile] = {}
        for name in files:
            try:
                opened[name] = st = SafetensorsFile(os.path.join(self.path, name))
            except SafetensorsError as e:
                problems.append(str(e))
                continue
            for key in st.keys():
                canon = canonical_name(key)
                if canon in self.tensors:
                    other = self.tensors[canon][0].path
                    problems.append(f"tensor {canon} is stored twice: in {other} and in {st.path} (as {key})")
                self.tensors[canon] = (st, key)
        for key, fname in weight_map.items():  # the index must not promise tensors a shard lacks
            if fname in opened and key not in opened[fname].entries:
                problems.append(f"{INDEX_NAME} lists tensor {key} in {fname}, which does not contain it")
        if problems:
            raise problems_error(self.path, "unreadable checkpoint", problems)

    def _file_list(self, problems: list[str]) -> tuple[list[str], dict[str, str]]:
        index = os.path.join(self.path, INDEX_NAME)
        if os.path.isfile(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
                if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                    raise TypeError("weight_map is not a {tensor: file} object")
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a valid safetensors index ({type(e).__name__}: {e})") from e
            return sorted(set(weight_map.values())), weight_map
        if os.path.isfile(os.path.join(self.path, SINGLE_NAME)):
            return [SINGLE_NAME], {}
        stray = sorted(f for f in os.listdir(self.path) if f.endswith(".safetensors"))
        hint = f" (found {', '.join(stray)} but no index naming them)" if stray else ""
        raise CheckpointError(f"{self.path}: no {SINGLE_NAME} and no {INDEX_NAME}{hint}")

    # ---------------------------------------------------------------- tensor access
    def info(self, name: str) -> dict[str, Any]:
        """{'dtype', 'shape', 'begin'} of a tensor (canonical name)."""
        st, key = self.tensors[name]
        return st.entries[key]

    def file_of(self, name: str) -> str:
        return os.path.basename(self.tensors[name][0].path)

    def read_rows(self, name: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) of a tensor seen as 2-D [shape[0], prod(shape[1:])], read straight from the file
        (into `out` when given: a C-contiguous array of that many rows, in the stored dtype)."""
        st, key = self.tensors[name]
        e = st.entries[key]
        rows, cols = _as_2d(e["shape"])
        if out is None:
            out = np.empty((stop - start, cols), e["dtype"])
        view = memoryview(out.reshape(-1).view(np.uint8))
        fh = self._handles.get(st.path)
        if fh is None:
            fh = self._handles[st.path] = open(st.path, "rb", buffering=0)  # unbuffered: no hidden extra copy
        fh.seek(st.data_start + e["begin"] + start * cols * e["dtype"].itemsize)
        done = 0
        while done < len(view):  # raw reads may return short counts (e.g. > 2 GB)
            n = fh.readinto(view[done:])
            if not n:
                raise CheckpointError(f"{st.path}: truncated while reading tensor {key}")
            done += n
        return out

    def close(self) -> None:
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()

    def __enter__(self) -> HFCheckpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _as_2d(shape: tuple[int, ...]) -> tuple[int, int]:
    return (shape[0], math.prod(shape[1:])) if shape else (1, 1)


# ------------------------------------------------------------------------------------------------ checking
def check_checkpoint(ckpt: HFCheckpoint, config: ModelConfig) -> list[Entry]:
    """Compare the checkpoint's tensors with the name table; raise one CheckpointError naming every mismatch."""
    table = name_table(config)
    problems: list[str] = []
    expected: set[str] = set()
    for entry in table:
        for name in entry.hf_names:
            expected.add(name)
            if name not in ckpt.tensors:
                why = f"; the head is untied because {config.tie_source}" if name == HEAD and config.tie_source else ""
                problems.append(f"missing tensor {name} (expected shape {list(entry.hf_shape)}){why}")
                continue
            info = ckpt.info(name)
            if tuple(info["shape"]) != entry.hf_shape:
                problems.append(f"tensor {name} in {ckpt.file_of(name)} has shape {list(info['shape'])}, "
                                f"expected {list(entry.hf_shape)}")
            if info["dtype"].kind != "f" and info["dtype"].name != "bfloat16":
                problems.append(f"tensor {name} in {ckpt.file_of(name)} has non-float dtype {info['dtype']}")
    for name in sorted(ckpt.tensors):
        if name in expected or name.endswith(IGNORED_SUFFIXES):
            continue
        if name == "lm_head.weight" and config.tie_word_embeddings:
            problems += _check_tied_head(ckpt, table)
            continue
        problems.append(f"unexpected tensor {name} in {ckpt.file_of(name)}")
    if problems:
        problems += _layer_count_hints(ckpt.tensors, config)
        raise problems_error(ckpt.path, "checkpoint does not match its config.json", problems)
    return table


def _check_tied_head(ckpt: HFCheckpoint, table: list[Entry]) -> list[str]:
    """A tied checkpoint may carry lm_head.weight only as an exact copy of the embedding (compared in chunks)."""
    head, emb = "lm_head.weight", "model.language_model.embed_tokens.weight"
    want = next(e.hf_shape for e in table if e.hf_name == emb)
    if emb not in ckpt.tensors or tuple(ckpt.info(emb)["shape"]) != want:
        return []  # reported as a missing / mis-shaped embedding
    if tuple(ckpt.info(head)["shape"]) != want:
        return [f"tensor {head} in {ckpt.file_of(head)} has shape {list(ckpt.info(head)['shape'])}, expected "
                f"{list(want)} (tie_word_embeddings is true)"]
    rows, cols = want
    step = max(1, CHUNK_BYTES // (4 * cols))
    for r in range(0, rows, step):
        a = ckpt.read_rows(head, r, min(rows, r + step)).astype(np.float32)
        b = ckpt.read_rows(emb, r, min(rows, r + step)).astype(np.float32)
        if not np.array_equal(a, b):
            return [f"tensor {head} in {ckpt.file_of(head)} differs from {emb} although tie_word_embeddings is true "
                    f"(first difference in rows {r}..{min(rows, r + step) - 1}); untie the config or drop the head"]
    return []


def _layer_count_hints(names: dict[str, Any], config: ModelConfig) -> list[str]:
    """When layer counts disagree, say so in one line rather than only as many missing/unexpected tensors."""
    hints = []
    for what, pattern, want in (
        ("text_config.num_hidden_layers", r"model\.language_model\.layers\.(\d+)\.", config.text.num_hidden_layers),
        ("vision_config.depth", r"model\.visual\.blocks\.(\d+)\.", config.vision.depth),
        ("len(vision_config.deepstack_visual_indexes)", r"model\.visual\.deepstack_merger_list\.(\d+)\.",
         len(config.vision.deepstack_visual_indexes)),
    ):
        found = {int(m.group(1)) for n in names if (m := re.match(pattern, n))}
        have = max(found) + 1 if found else 0
        if have != want:
            hints.append(f"config.json says {what} = {want}, the tensors have {have}")
    return hints


# ------------------------------------------------------------------------------------------------ loading
def load_hf_params(
    path: str | os.PathLike,
    config: ModelConfig,
    dtype: Any = "float32",
    sharding_fn: ShardingFn | None = None,
) -> dict[str, Any]:
    """Stream an HF checkpoint directory into our parameter tree of jax arrays.

    dtype: "float32" / "bfloat16" / "float16", or None / "keep" for each tensor's stored dtype.
    sharding_fn(path_tuple, shape) -> jax.sharding.Sharding | None: where each parameter goes (None: the default
        device). Sharded parameters are assembled with `jax.make_array_from_callback`, so on several hosts each
        process places only its own shards.
    Returns the nested dict described by `param_shapes(config)`. Raises CheckpointError naming every problem.
    """
    path = os.fspath(path)
    target = resolve_dtype(dtype)
    with HFCheckpoint(path) as ckpt:
        table = check_checkpoint(ckpt, config)
        total = sum(math.prod(e.shape) * (target or ckpt.info(e.hf_names[0])["dtype"]).itemsize for e in table)
        params: dict[str, Any] = {}
        with progress(total, f"loading {os.path.basename(path.rstrip('/'))}") as advance:
            for entry in sorted(table, key=lambda e: -math.prod(e.shape)):
                buf = assemble(ckpt, entry, target)
                advance(buf.nbytes)
                sharding = sharding_fn(entry.path, entry.shape) if sharding_fn else None
                set_path(params, entry.path, place(buf, sharding))
                # device_put leaves the host buffer in a reference cycle; free it now so that at most one
                # parameter's host copy ever exists (the loader's peak-memory guarantee).
                del buf
                release_memory()
    return params


def assemble(ckpt: HFCheckpoint, entry: Entry, target: np.dtype | None) -> np.ndarray:
    """Our parameter as one host array: each HF tensor read in row chunks straight into its slot."""
    stored = [ckpt.info(n)["dtype"] for n in entry.hf_names]
    buf = np.empty(entry.shape, target or np.result_type(*stored))
    for i, name in enumerate(entry.hf_names):
        slot = buf[i] if entry.layers else buf  # one layer in our layout, C-contiguous
        rows, cols = _as_2d(entry.hf_shape)
        direct = entry.transform == "copy" and stored[i] == buf.dtype
        step = max(1, CHUNK_BYTES // max(1, cols * stored[i].itemsize))
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            if direct:  # same layout and dtype: the file bytes land in the buffer with no copy at all
                ckpt.read_rows(name, r0, r1, out=slot.reshape(rows, cols)[r0:r1])
            elif entry.transform == "copy":
                slot.reshape(rows, cols)[r0:r1] = ckpt.read_rows(name, r0, r1)
            else:  # linear / conv: HF rows are our columns
                slot[:, r0:r1] = ckpt.read_rows(name, r0, r1).T
    return buf


def place(buf: np.ndarray, sharding: Any) -> jax.Array:
    if sharding is None:
        arr = jax.device_put(buf)
    else:
        arr = jax.make_array_from_callback(buf.shape, sharding, lambda index: buf[index])
    return arr.block_until_ready()
