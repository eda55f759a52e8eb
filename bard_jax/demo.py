"""`python -m bard_jax.demo`: the foundation end to end on a tiny random checkpoint, with no downloads.

1. transformers writes a tiny random Qwen3-VL checkpoint (`save_pretrained`) into a temp dir (needs torch, from
   the test extras; without torch the demo writes the checkpoint with our own exporter instead);
2. `bj.load_pretrained` streams it in; `bj.forward` prints logits for a prompt with an image, token-causal and
   block-causal;
3. convert/hf_to_jax and convert/jax_to_hf round trip it and the tensors are compared bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import jax
import numpy as np

import bard_jax as bj
from bard_jax import hf
from bard_jax.safetensors_io import SafetensorsFile


def write_tiny_checkpoint(path: str) -> str:
    """A tiny random Qwen3-VL directory. Uses transformers + torch when installed, else our exporter."""
    config = bj.preset("tiny")
    try:
        import torch
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        torch.manual_seed(0)
        hf_config = Qwen3VLConfig(**config.to_hf_dict())
        Qwen3VLForConditionalGeneration(hf_config).save_pretrained(path)
        return "transformers"
    except ImportError:
        params = bj.init_params(config, jax.random.key(0))
        hf.export_hf(params, config, None, path)
        return "bard_jax exporter (torch not installed)"


def fmt(x) -> str:
    return "[" + ", ".join(f"{v:+.4f}" for v in np.asarray(x, np.float64)) + "]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=None, help="where to write and keep the three checkpoints (default: a "
                   "temporary directory, removed at the end)")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    args = p.parse_args(argv)
    if args.workdir:
        return run(args.workdir)
    with tempfile.TemporaryDirectory(prefix="bard_demo_") as root:
        status = run(root)
    print("   (written under a temporary directory, now removed; pass --workdir DIR to keep the files)")
    return status


def run(root: str) -> int:
    src, ours, back = (os.path.join(root, d) for d in ("hf", "converted", "exported"))
    # An earlier demo's outputs are replaced; a directory holding anything else is left alone (an error).
    for path, kind in ((src, "hf"), (ours, "bard_jax"), (back, "hf")):
        hf.check_export_dir(path, kind, "the demo")

    writer = write_tiny_checkpoint(src)
    print(f"1. tiny random Qwen3-VL checkpoint written by {writer}: {src}")

    model = bj.load_pretrained(src)
    c = model.config
    grid = np.array([[1, 4, 4]])  # one 64x64 image: 4x4 patches -> 2x2 merged windows
    pixels = np.random.default_rng(0).standard_normal((16, c.vision.patch_dim)).astype(np.float32)
    ids = np.array([[1, 2, c.vision_start_token_id] + [c.image_token_id] * 4 + [c.vision_end_token_id, 3, 4, 5]])
    causal = bj.forward(model, ids, pixel_values=pixels, image_grid_thw=grid)
    block = bj.forward(model, ids, pixel_values=pixels, image_grid_thw=grid, block_size=4)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(model.params))
    print(f"2. loaded {n_params:,} parameters; logits {tuple(causal.shape)}")
    print(f"   token-causal, last position, first 5 logits: {fmt(causal[0, -1, :5])}")
    print(f"   block-causal (b=4), same position:          {fmt(block[0, -1, :5])}")

    params, config, raw = hf.load_converted(hf.save_converted(model.params, c, model.source["hf_config"], ours,
                                                              side_files_from=src), dtype=None)
    hf.export_hf(params, config, raw, back, side_files_from=ours)
    a, b = SafetensorsFile(os.path.join(src, "model.safetensors")), SafetensorsFile(
        os.path.join(back, "model.safetensors"))
    same = sorted(a.keys()) == sorted(b.keys()) and all(np.array_equal(a.read(k), b.read(k)) for k in a.keys())
    cfg_same = bj.ModelConfig.from_hf_dict(json.load(open(os.path.join(src, "config.json")))) == \
        bj.ModelConfig.from_hf_dict(json.load(open(os.path.join(back, "config.json"))))
    print(f"3. round trip HF -> {ours} -> {back}: {len(a.keys())} tensors bitwise identical: {same}; "
          f"config equivalent: {cfg_same}")
    return 0 if same and cfg_same else 1


if __name__ == "__main__":
    from bard_jax import cli

    raise SystemExit(cli.run(main, prog="python -m bard_jax.demo"))
