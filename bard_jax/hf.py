"""Hugging Face checkpoints <-> our parameter tree: the name table, streaming load, our converted format, export.

The name table (`name_table`) lists every parameter once: its path in our tree, the HF tensor name (with `{i}` for
the layer index when the parameter is stacked over layers), and the transform between the two layouts:

  linear: HF weight [out, in]          <-> our kernel [in, out] (transpose)
  conv:   HF Conv3d weight [D, C, T, p, p] <-> our kernel [C*T*p*p, D] (flatten, transpose)
  copy:   same layout (biases, norm weights -> `scale`, embedding tables)

Loading streams one HF tensor at a time into its slot of the stacked destination buffer, moves each finished
parameter to its device(s) and frees the host buffer before the next, so the weights are never held twice.
Every problem (missing, unexpected or mis-shaped tensors, unreadable files) is collected into one error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import glob
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from bard_jax.config import ConfigError, ModelConfig
from bard_jax.safetensors_io import SafetensorsError, SafetensorsFile, write_file

CONVERTED_MARKER = "bard_jax_config.json"
SIDE_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    "added_tokens.json", "chat_template.json", "chat_template.jinja", "preprocessor_config.json",
    "video_preprocessor_config.json", "generation_config.json", "processor_config.json", "task.json",
)
# Older HF layouts (Qwen2.5-VL style) that transformers still maps onto Qwen3-VL.
LEGACY_PREFIXES = (
    ("visual.", "model.visual."),
    ("model.layers.", "model.language_model.layers."),
    ("model.embed_tokens.", "model.language_model.embed_tokens."),
    ("model.norm.", "model.language_model.norm."),
)
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    """A checkpoint that does not match the model: names every offending file / tensor / field."""


@dataclasses.dataclass(frozen=True)
class Entry:
    path: tuple[str, ...]  # our tree path
    hf_name: str  # HF name; '{i}' marks the layer index of stacked parameters
    transform: str  # linear | conv | copy
    layers: int  # 0: not stacked; else the number of stacked layers


def name_table(config: ModelConfig) -> list[Entry]:
    v, t = config.vision, config.text
    out: list[Entry] = []

    def add(path: str, hf: str, transform: str, layers: int = 0) -> None:
        out.append(Entry(tuple(path.split("/")), hf, transform, layers))

    def linear(path: str, hf: str, layers: int = 0, bias: bool = True) -> None:
        add(f"{path}/kernel", f"{hf}.weight", "linear", layers)
        if bias:
            add(f"{path}/bias", f"{hf}.bias", "copy", layers)

    def norm(path: str, hf: str, layers: int = 0, bias: bool = True) -> None:
        add(f"{path}/scale", f"{hf}.weight", "copy", layers)
        if bias:
            add(f"{path}/bias", f"{hf}.bias", "copy", layers)

    def merger(path: str, hf: str, layers: int = 0) -> None:
        norm(f"{path}/norm", f"{hf}.norm", layers)
        linear(f"{path}/linear_fc1", f"{hf}.linear_fc1", layers)
        linear(f"{path}/linear_fc2", f"{hf}.linear_fc2", layers)

    add("visual/patch_embed/proj/kernel", "model.visual.patch_embed.proj.weight", "conv")
    add("visual/patch_embed/proj/bias", "model.visual.patch_embed.proj.bias", "copy")
    add("visual/pos_embed/embedding", "model.visual.pos_embed.weight", "copy")
    blk, n = "model.visual.blocks.{i}", v.depth
    norm("visual/blocks/norm1", f"{blk}.norm1", n)
    norm("visual/blocks/norm2", f"{blk}.norm2", n)
    linear("visual/blocks/attn/qkv", f"{blk}.attn.qkv", n)
    linear("visual/blocks/attn/proj", f"{blk}.attn.proj", n)
    linear("visual/blocks/mlp/linear_fc1", f"{blk}.mlp.linear_fc1", n)
    linear("visual/blocks/mlp/linear_fc2", f"{blk}.mlp.linear_fc2", n)
    merger("visual/merger", "model.visual.merger")
    if v.deepstack_visual_indexes:
        merger("visual/deepstack_merger_list", "model.visual.deepstack_merger_list.{i}",
               len(v.deepstack_visual_indexes))
    add("language_model/embed_tokens/embedding", "model.language_model.embed_tokens.weight", "copy")
    lay, n = "model.language_model.layers.{i}", t.num_hidden_layers
    norm("language_model/layers/input_layernorm", f"{lay}.input_layernorm", n, bias=False)
    norm("language_model/layers/post_attention_layernorm", f"{lay}.post_attention_layernorm", n, bias=False)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        linear(f"language_model/layers/self_attn/{proj}", f"{lay}.self_attn.{proj}", n, bias=False)
    norm("language_model/layers/self_attn/q_norm", f"{lay}.self_attn.q_norm", n, bias=False)
    norm("language_model/layers/self_attn/k_norm", f"{lay}.self_attn.k_norm", n, bias=False)
    for proj in ("gate_proj", "up_proj", "down_proj"):
        linear(f"language_model/layers/mlp/{proj}", f"{lay}.mlp.{proj}", n, bias=False)
    norm("language_model/norm", "model.language_model.norm", bias=False)
    if not config.tie_word_embeddings:
        linear("lm_head", "lm_head", bias=False)
    return out


def param_shapes(config: ModelConfig) -> dict[str, Any]:
    """Nested dict of our parameter shapes (derived from the network itself, so it cannot drift)."""
    return json.loads(_param_shapes_json(config), object_hook=lambda d: {k: tuple(v) if isinstance(v, list) else v
                                                                         for k, v in d.items()})


@functools.lru_cache(maxsize=32)
def _param_shapes_json(config: ModelConfig) -> str:
    # Tracing the network costs seconds; loads call this several times per config. Cached as JSON so callers
    # get a fresh, unshared dict each time.
    from bard_jax.modeling import init_params

    abstract = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    return json.dumps(jax.tree_util.tree_map(lambda x: list(x.shape), abstract))


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def to_hf_layout(arr: np.ndarray, transform: str, hf_shape: tuple[int, ...] | None = None) -> np.ndarray:
    if transform == "linear":
        return arr.T
    if transform == "conv":
        return arr.T.reshape(hf_shape)
    return arr


def from_hf_layout(arr: np.ndarray, transform: str) -> np.ndarray:
    if transform == "linear":
        return arr.T
    if transform == "conv":
        return arr.reshape(arr.shape[0], -1).T
    return arr


def hf_shape_of(entry: Entry, our_shape: tuple[int, ...], config: ModelConfig) -> tuple[int, ...]:
    """The HF tensor shape of one layer of our parameter."""
    shape = our_shape[1:] if entry.layers else our_shape
    if entry.transform == "linear":
        return tuple(reversed(shape))
    if entry.transform == "conv":
        v = config.vision
        return (shape[1], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    return tuple(shape)


def hf_names(entry: Entry) -> list[str]:
    if entry.layers:
        return [entry.hf_name.format(i=i) for i in range(entry.layers)]
    return [entry.hf_name]


# ------------------------------------------------------------------------------------------------ reading
def read_hf_config(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, the raw config.json dict) of an HF directory."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint directory not found: {path}")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"{path}: no config.json (not an HF checkpoint directory)")
    try:
        with open(cfg_path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg_path}: not valid JSON ({e})") from e
    return ModelConfig.from_hf_dict(raw, source=cfg_path), raw


def open_safetensors(path: str) -> dict[str, SafetensorsFile]:
    """HF tensor name (canonical) -> the file holding it, for a single file or an indexed set of shards."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from e
        files = sorted(set(weight_map.values()))
    elif os.path.isfile(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(path, "*.safetensors")))
        if not found:
            raise CheckpointError(f"{path}: no model.safetensors and no model.safetensors.index.json")
        files = found
    problems, by_name = [], {}
    for name in files:
        try:
            st = SafetensorsFile(os.path.join(path, name))
        except SafetensorsError as e:
            problems.append(str(e))
            continue
        for key in st.keys():
            canon = canonical_name(key)
            if canon in by_name:
                problems.append(f"tensor {key!r} appears in both {by_name[canon].path} and {st.path}")
            by_name[canon] = st
    if problems:
        raise CheckpointError(f"{path}: unreadable checkpoint:\n  " + "\n  ".join(problems))
    return by_name


def canonical_name(name: str) -> str:
    for old, new in LEGACY_PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _source_key(st: SafetensorsFile, canon: str) -> str:
    if canon in st.entries:
        return canon
    for old, new in LEGACY_PREFIXES:
        if canon.startswith(new) and old + canon[len(new):] in st.entries:
            return old + canon[len(new):]
    raise KeyError(canon)


def check_checkpoint(path: str, config: ModelConfig, files: dict[str, SafetensorsFile]) -> list[Entry]:
    """Compare the checkpoint with the name table; raise one CheckpointError naming every mismatch."""
    table = name_table(config)
    shapes = param_shapes(config)
    problems: list[str] = []
    expected: set[str] = set()
    for entry in table:
        want = hf_shape_of(entry, _get(shapes, entry.path), config)
        for name in hf_names(entry):
            expected.add(name)
            st = files.get(name)
            if st is None:
                problems.append(f"missing tensor {name} (expected shape {list(want)})")
                continue
            got = st.entries[_source_key(st, name)]["shape"]
            if tuple(got) != want:
                problems.append(f"tensor {name} in {os.path.basename(st.path)} has shape {list(got)}, "
                                f"expected {list(want)}")
    for name, st in files.items():
        if name in expected or name.endswith(IGNORED_SUFFIXES):
            continue
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # checked for equality with the embedding after loading
        problems.append(f"unexpected tensor {name} in {os.path.basename(st.path)}")
    if problems:
        raise CheckpointError(f"{path}: checkpoint does not match its config.json:\n  " + "\n  ".join(problems))
    return table


ShardingFn = Callable[[tuple[str, ...], tuple[int, ...]], Any]


def load_hf_params(
    path: str | os.PathLike, config: ModelConfig, dtype: Any = "float32", sharding_fn: ShardingFn | None = None
) -> dict[str, Any]:
    """Stream an HF checkpoint into our parameter tree of device arrays.

    dtype: "float32" / "bfloat16" / None (keep each tensor's stored dtype).
    sharding_fn(path, shape): a jax Sharding per parameter (None: default device).
    """
    from bard_jax.modeling import resolve_dtype

    path = os.fspath(path)
    files = open_safetensors(path)
    table = check_checkpoint(path, config, files)
    target = resolve_dtype(dtype)
    shapes = param_shapes(config)
    total = sum(files[n].entries[_source_key(files[n], n)]["dtype"].itemsize *
                int(np.prod(files[n].entries[_source_key(files[n], n)]["shape"]))
                for e in table for n in hf_names(e))
    params: dict[str, Any] = {}
    # Largest first: the one transient host buffer then never adds to a large resident set.
    order = sorted(table, key=lambda e: -int(np.prod(_get(shapes, e.path))))
    with _progress(total, f"loading {os.path.basename(path.rstrip('/'))}") as advance:
        for entry in order:
            names = hf_names(entry)
            first = files[names[0]]
            src_dtype = first.entries[_source_key(first, names[0])]["dtype"]
            buf = np.empty(_get(shapes, entry.path), target or src_dtype)
            for i, name in enumerate(names):
                st = files[name]
                arr = from_hf_layout(st.read(_source_key(st, name)), entry.transform)
                if entry.layers:
                    buf[i] = arr
                else:
                    buf[...] = arr
                advance(arr.nbytes)
                del arr
            sharding = sharding_fn(entry.path, buf.shape) if sharding_fn else None
            arr = jax.device_put(buf, sharding) if sharding is not None else jax.device_put(buf)
            arr.block_until_ready()
            _set(params, entry.path, arr)
            # device_put keeps the host buffer alive in a reference cycle; collect it now so that at most one
            # parameter's host copy exists at any time (the peak-RSS guarantee of this loader).
            del buf, arr
            gc.collect()
    if config.tie_word_embeddings and "lm_head.weight" in files:
        st = files["lm_head.weight"]
        head = st.read(_source_key(st, "lm_head.weight"))
        emb = np.asarray(params["language_model"]["embed_tokens"]["embedding"]).astype(head.dtype)
        if not np.array_equal(head, emb):
            raise CheckpointError(f"{path}: tie_word_embeddings is true but lm_head.weight differs from the embedding")
    return params


@contextlib.contextmanager
def _progress(total_bytes: int, desc: str) -> Iterator[Callable[[int], None]]:
    """A byte progress bar on stderr for checkpoints above 256 MB; silent otherwise."""
    if total_bytes < 256 * 2**20 or jax.process_index() != 0:
        yield lambda n: None
        return
    from tqdm import tqdm

    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=desc, file=sys.stderr)
    try:
        yield bar.update
    finally:
        bar.close()


# ------------------------------------------------------------------------------------------------ writing
@contextlib.contextmanager
def atomic_dir(out_dir: str) -> Iterator[str]:
    """Yield a temp dir next to `out_dir`; on success it replaces `out_dir`, on failure it is removed.

    Nothing half-written ever sits at `out_dir`.
    """
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(out_dir):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
        os.replace(out_dir, os.path.join(old, "x"))
    os.replace(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def copy_side_files(src: str | None, dst: str) -> None:
    """Tokenizer / processor / generation files travel with the weights."""
    if not src or not os.path.isdir(src):
        return
    for name in SIDE_FILES:
        p = os.path.join(src, name)
        if os.path.isfile(p):
            shutil.copy2(p, os.path.join(dst, name))


def parse_size(text: str | int) -> int:
    if isinstance(text, int):
        return text
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    t = text.strip().upper()
    for u in sorted(units, key=len, reverse=True):
        if t.endswith(u):
            return int(float(t[: -len(u)]) * units[u])
    return int(t)


def export_hf(
    params: dict[str, Any],
    config: ModelConfig,
    raw_hf_config: dict[str, Any] | None,
    out_dir: str,
    max_shard_bytes: int | str = "5GB",
    side_files_from: str | None = None,
) -> str:
    """Write an HF directory (config.json in the source's dialect and model_type, safetensors, side files)."""
    limit = parse_size(max_shard_bytes)
    table = name_table(config)
    plan: list[tuple[str, Entry, int]] = []  # (hf name, entry, layer)
    for entry in table:
        for i, name in enumerate(hf_names(entry)):
            plan.append((name, entry, i))

    def nbytes(entry: Entry) -> int:
        leaf = _get(params, entry.path)
        per = int(np.prod(leaf.shape[1:] if entry.layers else leaf.shape))
        return per * np.dtype(leaf.dtype).itemsize

    shards: list[list[tuple[str, Entry, int]]] = [[]]
    size = 0
    for item in plan:
        b = nbytes(item[1])
        if shards[-1] and size + b > limit:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += b
    total = sum(nbytes(e) for _, e, _ in plan)
    with atomic_dir(out_dir) as tmp:
        hf_cfg = config.to_hf_dict(base=raw_hf_config)
        leaf_dtype = np.dtype(jax.tree_util.tree_leaves(params)[0].dtype)
        hf_cfg["dtype"] = {"bfloat16": "bfloat16", "float32": "float32", "float16": "float16"}.get(leaf_dtype.name,
                                                                                                  "float32")
        hf_cfg.pop("torch_dtype", None)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_cfg, f, indent=2)
        weight_map = {}
        with _progress(total, "exporting") as advance:
            for k, shard in enumerate(shards):
                fname = (
                    "model.safetensors" if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
                )
                tensors = {}
                for name, entry, i in shard:
                    leaf = _get(params, entry.path)
                    arr = np.asarray(jax.device_get(leaf[i] if entry.layers else leaf))
                    tensors[name] = np.ascontiguousarray(
                        to_hf_layout(arr, entry.transform, hf_shape_of(entry, tuple(leaf.shape), config))
                    )
                    weight_map[name] = fname
                    advance(arr.nbytes)
                write_file(os.path.join(tmp, fname), tensors, {"format": "pt"})
                del tensors
        if len(shards) > 1:
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        copy_side_files(side_files_from, tmp)
    return out_dir


# ------------------------------------------------------------------------------------------------ our format
def is_converted_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONVERTED_MARKER))


def save_converted(
    params: dict[str, Any],
    config: ModelConfig,
    raw_hf_config: dict[str, Any] | None,
    out_dir: str,
    side_files_from: str | None = None,
) -> str:
    """Our format: orbax params under params/, bard_jax_config.json (our config + the original HF config)."""
    import orbax.checkpoint as ocp

    with atomic_dir(out_dir) as tmp:
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(os.path.join(tmp, "params"), params)
        ckptr.wait_until_finished()
        meta = {
            "format": "bard_jax",
            "version": 1,
            "hf_config": config.to_hf_dict(base=raw_hf_config),
            "dtype": np.dtype(jax.tree_util.tree_leaves(params)[0].dtype).name,
        }
        with open(os.path.join(tmp, CONVERTED_MARKER), "w") as f:
            json.dump(meta, f, indent=2)
        copy_side_files(side_files_from, tmp)
    return out_dir


def load_converted(
    path: str, dtype: Any = "float32", sharding_fn: ShardingFn | None = None
) -> tuple[dict[str, Any], ModelConfig, dict[str, Any]]:
    """Read our format back, restoring each array straight into its sharding and dtype."""
    import orbax.checkpoint as ocp

    from bard_jax.modeling import resolve_dtype

    marker = os.path.join(path, CONVERTED_MARKER)
    try:
        with open(marker) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{marker}: unreadable ({e})") from e
    raw = meta.get("hf_config")
    config = ModelConfig.from_hf_dict(raw, source=marker)
    target = resolve_dtype(dtype) or np.dtype(meta.get("dtype", "float32"))
    shapes = param_shapes(config)
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def abstract(p, shape):
        path_t = tuple(getattr(k, "key", k) for k in p)
        sharding = (sharding_fn(path_t, shape) if sharding_fn else None) or default
        return jax.ShapeDtypeStruct(shape, target, sharding=sharding)

    target_tree = jax.tree_util.tree_map_with_path(abstract, shapes, is_leaf=lambda x: isinstance(x, tuple))
    params_dir = os.path.join(path, "params")
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"{path}: missing params/ directory")
    ckptr = ocp.PyTreeCheckpointer()
    leaves = jax.tree_util.tree_flatten_with_path(target_tree)[0]
    total = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for _, x in leaves)
    # Orbax stages each array on the host before placing it, so restoring a large tree at once would hold every
    # parameter twice: above 256 MB restore one parameter per call (slower, bounded memory).
    groups = [leaves] if total < 256 * 2**20 else [[leaf] for leaf in leaves]
    params: dict[str, Any] = {}
    for group in groups:
        item: dict[str, Any] = {}
        for key_path, leaf in group:
            _set(item, tuple(getattr(k, "key", k) for k in key_path), leaf)
        restore_args = jax.tree_util.tree_map(
            lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype), item
        )
        try:
            got = ckptr.restore(
                params_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
            )
        except Exception as e:  # orbax raises many types; name the directory and the parameter
            raise CheckpointError(f"{params_dir}: cannot restore parameters ({type(e).__name__}: {e})") from e
        for key_path, _ in group:
            keys = tuple(getattr(k, "key", k) for k in key_path)
            _set(params, keys, _get(got, keys))
        del got
        gc.collect()
    return params, config, raw
