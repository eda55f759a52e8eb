"""The name table: every parameter of our tree, its HF tensor name(s), and the transform between the two layouts.

Letters: L stacked layers, D text width, F text mlp width, V vocab, N q heads, K kv heads, H head dim,
Dv / Fv vision width / mlp width, C*T*P*P one flattened pixel row, M = spatial_merge_size**2 (4).

Transforms (HF layout -> ours; the inverse on export):
  linear  HF weight [out, in]              -> kernel [in, out]        (transpose)
  conv    HF Conv3d weight [Dv, C, T, P, P] -> kernel [C*T*P*P, Dv]   (flatten the input dims, transpose)
  copy    same layout                                                (biases, norm weight -> `scale`, embeddings)
A stacked entry (`layers` > 0) gathers HF tensors `...{i}...` for i < layers along a new leading axis.

HF names are the ones transformers 5.x writes (`model.visual.*`, `model.language_model.*`, `lm_head.weight`).
`canonical_name` maps the other layouts that transformers 5.23 still loads for Qwen3-VL onto them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from bard_jax.config import ModelConfig

# Alternative prefixes transformers 5.23 loads into Qwen3VLForConditionalGeneration (checked against its
# `from_pretrained`): a bare Qwen3VLModel save (no `model.` prefix) and the duplicated `.model.model` of some
# 5.10-5.23 saves. Qwen2-VL style `model.layers.*` is *not* accepted by transformers for Qwen3-VL, so not here.
_ALIASES = (
    (re.compile(r"^language_model\.model\.model\."), "model.language_model."),
    (re.compile(r"^model\.language_model\.model\."), "model.language_model."),
    (re.compile(r"^(visual|language_model)\."), r"model.\1."),
)
# Non-persistent buffers that some old saves carry; they are recomputed, never loaded.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One parameter of our tree.

    path: its path in our nested dict, e.g. ("language_model", "layers", "self_attn", "q_proj", "kernel").
    hf_name: the HF tensor name; stacked entries carry `{i}` where the layer index goes.
    transform: "linear" | "conv" | "copy" (see the module docstring).
    layers: 0 for an unstacked parameter, else the number of stacked HF tensors.
    hf_shape: the shape of one HF tensor (one layer).
    """

    path: tuple[str, ...]
    hf_name: str
    transform: str
    layers: int
    hf_shape: tuple[int, ...]

    @property
    def layer_shape(self) -> tuple[int, ...]:
        """Our shape of one layer."""
        if self.transform == "linear":
            return tuple(reversed(self.hf_shape))
        if self.transform == "conv":
            return (math.prod(self.hf_shape[1:]), self.hf_shape[0])
        return self.hf_shape

    @property
    def shape(self) -> tuple[int, ...]:
        """Our full shape (with the leading layer axis when stacked)."""
        return ((self.layers,) if self.layers else ()) + self.layer_shape

    @property
    def hf_names(self) -> list[str]:
        if self.layers:
            return [self.hf_name.format(i=i) for i in range(self.layers)]
        return [self.hf_name]

    @property
    def key(self) -> str:
        return "/".join(self.path)


def name_table(config: ModelConfig) -> list[Entry]:
    """Every parameter for `config`, in the order of transformers' state dict (module order), so that export can
    write tensors in the same order and shard them the same way."""
    v, t = config.vision, config.text
    dv, fv, wide = v.hidden_size, v.intermediate_size, v.hidden_size * v.merge_unit
    d, f, h = t.hidden_size, t.intermediate_size, t.head_dim
    out: list[Entry] = []

    def add(path: str, hf: str, transform: str, hf_shape: tuple[int, ...], layers: int = 0) -> None:
        out.append(Entry(tuple(path.split("/")), hf, transform, layers, tuple(hf_shape)))

    def linear(path: str, hf: str, n_in: int, n_out: int, layers: int = 0, bias: bool = True) -> None:
        add(f"{path}/kernel", f"{hf}.weight", "linear", (n_out, n_in), layers)
        if bias:
            add(f"{path}/bias", f"{hf}.bias", "copy", (n_out,), layers)

    def norm(path: str, hf: str, width: int, layers: int = 0, bias: bool = True) -> None:
        add(f"{path}/scale", f"{hf}.weight", "copy", (width,), layers)
        if bias:
            add(f"{path}/bias", f"{hf}.bias", "copy", (width,), layers)

    def merger(path: str, hf: str, norm_width: int, layers: int = 0) -> None:
        norm(f"{path}/norm", f"{hf}.norm", norm_width, layers)
        linear(f"{path}/linear_fc1", f"{hf}.linear_fc1", wide, wide, layers)
        linear(f"{path}/linear_fc2", f"{hf}.linear_fc2", wide, d, layers)

    # ---- vision tower
    pv = "model.visual"
    add("visual/patch_embed/proj/kernel", f"{pv}.patch_embed.proj.weight", "conv",
        (dv, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size))
    add("visual/patch_embed/proj/bias", f"{pv}.patch_embed.proj.bias", "copy", (dv,))
    add("visual/pos_embed/embedding", f"{pv}.pos_embed.weight", "copy", (v.num_position_embeddings, dv))
    blk, n = f"{pv}.blocks.{{i}}", v.depth
    norm("visual/blocks/norm1", f"{blk}.norm1", dv, n)
    norm("visual/blocks/norm2", f"{blk}.norm2", dv, n)
    linear("visual/blocks/attn/qkv", f"{blk}.attn.qkv", dv, 3 * dv, n)
    linear("visual/blocks/attn/proj", f"{blk}.attn.proj", dv, dv, n)
    linear("visual/blocks/mlp/linear_fc1", f"{blk}.mlp.linear_fc1", dv, fv, n)
    linear("visual/blocks/mlp/linear_fc2", f"{blk}.mlp.linear_fc2", fv, dv, n)
    # The final merger normalises each patch (Dv) before grouping; deepstack mergers normalise the group (M*Dv).
    merger("visual/merger", f"{pv}.merger", dv)
    if v.deepstack_visual_indexes:
        merger("visual/deepstack_merger_list", f"{pv}.deepstack_merger_list.{{i}}", wide,
               len(v.deepstack_visual_indexes))
    # ---- text decoder (no biases)
    pt = "model.language_model"
    add("language_model/embed_tokens/embedding", f"{pt}.embed_tokens.weight", "copy", (t.vocab_size, d))
    lay, n = f"{pt}.layers.{{i}}", t.num_hidden_layers
    attn = "language_model/layers/self_attn"
    nq, nk = t.num_attention_heads * h, t.num_key_value_heads * h
    linear(f"{attn}/q_proj", f"{lay}.self_attn.q_proj", d, nq, n, bias=False)
    linear(f"{attn}/k_proj", f"{lay}.self_attn.k_proj", d, nk, n, bias=False)
    linear(f"{attn}/v_proj", f"{lay}.self_attn.v_proj", d, nk, n, bias=False)
    linear(f"{attn}/o_proj", f"{lay}.self_attn.o_proj", nq, d, n, bias=False)
    norm(f"{attn}/q_norm", f"{lay}.self_attn.q_norm", h, n, bias=False)
    norm(f"{attn}/k_norm", f"{lay}.self_attn.k_norm", h, n, bias=False)
    linear("language_model/layers/mlp/gate_proj", f"{lay}.mlp.gate_proj", d, f, n, bias=False)
    linear("language_model/layers/mlp/up_proj", f"{lay}.mlp.up_proj", d, f, n, bias=False)
    linear("language_model/layers/mlp/down_proj", f"{lay}.mlp.down_proj", f, d, n, bias=False)
    norm("language_model/layers/input_layernorm", f"{lay}.input_layernorm", d, n, bias=False)
    norm("language_model/layers/post_attention_layernorm", f"{lay}.post_attention_layernorm", d, n, bias=False)
    norm("language_model/norm", f"{pt}.norm", d, bias=False)
    # ---- head: tied checkpoints use the embedding matrix and have no lm_head parameter
    if not config.tie_word_embeddings:
        linear("lm_head", "lm_head", d, t.vocab_size, bias=False)
    return out


def param_shapes(config: ModelConfig) -> dict[str, Any]:
    """Nested dict of our parameter shapes (tuples), e.g. shapes["visual"]["blocks"]["attn"]["qkv"]["kernel"]
    == (depth, Dv, 3*Dv). The contract between the loader and the Flax modules."""
    out: dict[str, Any] = {}
    for e in name_table(config):
        set_path(out, e.path, e.shape)
    return out


def hf_tensor_order(table: list[Entry]) -> list[tuple[str, Entry, int]]:
    """(HF name, entry, layer) for every HF tensor in transformers' state-dict order: within a run of entries
    stacked over the same layers (e.g. all of `model.visual.blocks.{i}.*`) layer-major, like torch's modules."""
    out: list[tuple[str, Entry, int]] = []
    i = 0
    while i < len(table):
        group = table[i].hf_name.split("{i}")[0]
        run = [table[i]]
        while table[i].layers and i + len(run) < len(table) and table[i + len(run)].hf_name.startswith(group + "{i}"):
            run.append(table[i + len(run)])
        for layer in range(max(1, run[0].layers)):
            out += [(e.hf_name.format(i=layer), e, layer) for e in run]
        i += len(run)
    return out


def canonical_name(name: str) -> str:
    """The transformers 5.x name of an HF tensor name written in any layout transformers accepts."""
    for pattern, repl in _ALIASES:
        if pattern.match(name):
            return pattern.sub(repl, name, count=1)
    return name


def get_path(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def flatten(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """{path tuple: leaf} of a nested dict (leaves: anything that is not a dict)."""
    out: dict[tuple[str, ...], Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def to_hf_layout(layer: Any, entry: Entry) -> Any:
    """One layer of our parameter -> the HF tensor (a view where possible)."""
    if entry.transform == "linear":
        return layer.T
    if entry.transform == "conv":
        return layer.T.reshape(entry.hf_shape)
    return layer


def from_hf_layout(tensor: Any, entry: Entry) -> Any:
    """One HF tensor -> one layer of our parameter (a view where possible)."""
    if entry.transform == "linear":
        return tensor.T
    if entry.transform == "conv":
        return tensor.reshape(tensor.shape[0], -1).T
    return tensor
