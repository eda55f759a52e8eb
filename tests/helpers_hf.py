"""Tiny random Qwen3-VL / BARD-VL checkpoints written by transformers, for loader, conversion and parity tests.

    path = make_tiny_hf_checkpoint(tmp_path / "ckpt", tied=False, dtype="bfloat16", shards=True)

Shapes are small but non-trivial: text hidden 64, 4 q heads / 2 kv heads (GQA), head_dim 32 with mrope_section
[6, 5, 5], 3 layers, vocab 512; vision hidden 32, 2 heads, depth 3, mlp 64, 64 position embeddings (8x8), deepstack
taps (0, 1); special ids inside the vocabulary (image 500, video 501, vision start 502, vision end 503).
Norm weights and all biases are perturbed away from transformers' 1 / 0 initialisation so that they are tested.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

IMG, VID, VSTART, VEND = 500, 501, 502, 503
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tiny_hf_config(*, tied: bool = True, deepstack=(0, 1), text: dict | None = None, vision: dict | None = None,
                   **top: Any) -> Qwen3VLConfig:
    """A transformers Qwen3VLConfig; `text` / `vision` / keyword overrides replace the defaults above."""
    text_cfg = dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=4096, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [6, 5, 5],
                         "mrope_interleaved": True},
    )
    vision_cfg = dict(
        depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
        temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=64,
        deepstack_visual_indexes=list(deepstack),
    )
    text_cfg.update(text or {})
    vision_cfg.update(vision or {})
    kw = dict(image_token_id=IMG, video_token_id=VID, vision_start_token_id=VSTART, vision_end_token_id=VEND,
              tie_word_embeddings=tied)
    kw.update(top)
    return Qwen3VLConfig(text_config=text_cfg, vision_config=vision_cfg, **kw)


def tiny_hf_model(*, seed: int = 0, **config_kw: Any) -> Qwen3VLForConditionalGeneration:
    """A float32 eval-mode model with random weights (norms and biases perturbed); kwargs go to tiny_hf_config."""
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(tiny_hf_config(**config_kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):  # initialised to exactly 1 / 0: would hide layout bugs
                p.add_(0.1 * torch.randn_like(p))
    return model


def make_tiny_hf_checkpoint(
    path: str | os.PathLike,
    *,
    tied: bool = True,
    dtype: str = "float32",
    shards: bool | str = False,
    dialect: str = "5.x",
    model_type: str = "qwen3_vl",
    tie_in: str = "top",
    deepstack=(0, 1),
    seed: int = 0,
    model: Qwen3VLForConditionalGeneration | None = None,
    **config_kw: Any,
) -> str:
    """Save a tiny model with `save_pretrained` and rewrite config.json into the requested form; returns the path.

    dtype: "float32" | "bfloat16" | "float16" (the stored tensors). shards: True (about 200 KB per file) or a
    max_shard_size string like "100KB" for several files + model.safetensors.index.json. dialect: "5.x" (as
    saved: `rope_parameters`, `dtype`) or "4.x" (`rope_theta` + `rope_scaling`, `torch_dtype`). model_type:
    "qwen3_vl" or "bard_vl" (architectures BardVLForConditionalGeneration). tie_in: "top" or "text" (where
    `tie_word_embeddings` sits). model: save this model instead of a fresh `tiny_hf_model(...)`.
    Other keyword arguments (text=..., vision=..., top-level fields) go to `tiny_hf_config`.
    """
    path = os.fspath(path)
    if model is None:
        model = tiny_hf_model(seed=seed, tied=tied, deepstack=deepstack, **config_kw)
    max_shard = {False: "50GB", True: "200KB"}.get(shards, shards)
    model.to(TORCH_DTYPES[dtype]).save_pretrained(path, max_shard_size=max_shard)
    model.float()
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    rewrite_config(cfg, dialect=dialect, model_type=model_type, tie_in=tie_in)
    with open(cfg_path, "w") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")  # as transformers writes it
    return path


def rewrite_config(cfg: dict, *, dialect: str = "5.x", model_type: str = "qwen3_vl", tie_in: str = "top") -> dict:
    """Rewrite (in place) a transformers 5.x Qwen3-VL config dict into another dialect / model type."""
    tc = cfg["text_config"]
    if dialect == "4.x":
        rope = dict(tc.pop("rope_parameters"))
        tc["rope_theta"] = rope.pop("rope_theta")
        tc["rope_scaling"] = rope
        if "dtype" in cfg:
            cfg["torch_dtype"] = cfg.pop("dtype")
    elif dialect != "5.x":
        raise ValueError(f"unknown dialect {dialect!r}")
    if model_type == "bard_vl":
        cfg["model_type"] = "bard_vl"
        cfg["architectures"] = ["BardVLForConditionalGeneration"]
    if tie_in == "text":
        tc["tie_word_embeddings"] = cfg.pop("tie_word_embeddings")
    return cfg


def read_raw_tensors(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """{name: (safetensors dtype, shape, raw bytes)} of every tensor in an HF directory (bitwise comparisons)."""
    out = {}
    for fname in sorted(os.listdir(path)):
        if not fname.endswith(".safetensors"):
            continue
        with open(os.path.join(path, fname), "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
            data = f.read()
        for name, e in header.items():
            if name != "__metadata__":
                begin, end = e["data_offsets"]
                out[name] = (e["dtype"], tuple(e["shape"]), data[begin:end])
    return out
