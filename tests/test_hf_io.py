"""Checkpoint I/O: HF -> ours -> HF round trips, BARD-VL dialects, sharded loading, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from test_model_parity import make_checkpoint, tiny_hf_config
from transformers import Qwen3VLForConditionalGeneration

import bard_jax as bj
from bard_jax import hf
from bard_jax.config import ConfigError, ModelConfig
from bard_jax.sharding import make_mesh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(name, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "convert", name), *map(str, args)],
                          capture_output=True, text=True)


def tensors_of(path):
    """All tensors of an HF dir as numpy (bf16 compared through its bit pattern)."""
    out = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            with open(os.path.join(path, f), "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
                data = fh.read()
            for name, e in header.items():
                if name != "__metadata__":
                    out[name] = (e["dtype"], tuple(e["shape"]), data[e["data_offsets"][0]: e["data_offsets"][1]])
    return out


@pytest.mark.parametrize("tied,dtype,shard", [(True, torch.float32, None), (False, torch.bfloat16, "200KB")])
def test_round_trip_is_bitwise(tmp_path, tied, dtype, shard):
    src, mid, dst = tmp_path / "src", tmp_path / "ours", tmp_path / "back"
    hf_model = make_checkpoint(src, tied=tied, dtype=dtype)
    if shard:  # re-save as several shards with an index
        Qwen3VLForConditionalGeneration.from_pretrained(src, dtype=dtype).save_pretrained(src, max_shard_size=shard)
        assert os.path.isfile(src / "model.safetensors.index.json")
    r = run_script("hf_to_jax.py", src, mid)
    assert r.returncode == 0, r.stderr
    r = run_script("jax_to_hf.py", mid, dst, "--max-shard-size", shard or "5GB")
    assert r.returncode == 0, r.stderr
    a, b = tensors_of(src), tensors_of(dst)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], f"{name} differs after the round trip"
    src_cfg = json.load(open(src / "config.json"))
    dst_cfg = json.load(open(dst / "config.json"))
    assert ModelConfig.from_hf_dict(src_cfg) == ModelConfig.from_hf_dict(dst_cfg)
    assert dst_cfg["model_type"] == "qwen3_vl" and "rope_parameters" in dst_cfg["text_config"]
    assert ("lm_head.weight" in b) == (not tied)
    reloaded, info = Qwen3VLForConditionalGeneration.from_pretrained(dst, dtype=dtype, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        np.testing.assert_array_equal(reloaded(input_ids=ids).logits.float().numpy(),
                                      Qwen3VLForConditionalGeneration.from_pretrained(src, dtype=dtype)(
                                          input_ids=ids).logits.float().numpy())
    del hf_model


def to_bard_4x(path):
    """Rewrite a saved Qwen3-VL config.json into a BARD-VL one in the transformers 4.x dialect."""
    cfg = json.load(open(path / "config.json"))
    cfg["model_type"] = "bard_vl"
    cfg["architectures"] = ["BardVLForConditionalGeneration"]
    tc = cfg["text_config"]
    rope = tc.pop("rope_parameters")
    tc["rope_theta"] = rope.pop("rope_theta")
    tc["rope_scaling"] = rope
    tc["tie_word_embeddings"] = cfg.pop("tie_word_embeddings")  # the other place it may sit
    json.dump(cfg, open(path / "config.json", "w"), indent=2)


def test_bard_vl_4x_dialect_loads_unchanged_and_exports_in_its_dialect(tmp_path):
    src = tmp_path / "bard"
    make_checkpoint(src, tied=True)
    qwen = bj.load_pretrained(src)
    to_bard_4x(src)
    bard = bj.load_pretrained(src)
    assert bard.config.model_type == "bard_vl" and bard.config.hf_dialect == "4.x"
    assert bard.config.tie_word_embeddings
    ids = np.array([[3, 4, 5, 6, 7]])
    np.testing.assert_array_equal(np.asarray(bj.forward(bard, ids)), np.asarray(bj.forward(qwen, ids)))
    out = tmp_path / "out"
    hf.export_hf(bard.params, bard.config, bard.source["hf_config"], str(out))
    cfg = json.load(open(out / "config.json"))
    assert cfg["model_type"] == "bard_vl" and cfg["architectures"] == ["BardVLForConditionalGeneration"]
    assert "rope_scaling" in cfg["text_config"] and "rope_parameters" not in cfg["text_config"]
    assert cfg["text_config"]["tie_word_embeddings"] is True and "tie_word_embeddings" not in cfg


def test_config_dialects():
    base = tiny_hf_config(True).to_dict()
    five = ModelConfig.from_hf_dict(base)
    assert five.hf_dialect == "5.x" and five.text.mrope_section == (6, 5, 5) and five.text.rope_theta == 5e6
    four = json.loads(json.dumps(base))
    rope = four["text_config"].pop("rope_parameters")
    four["text_config"]["rope_theta"] = rope.pop("rope_theta")
    four["text_config"]["rope_scaling"] = rope
    parsed = ModelConfig.from_hf_dict(four)
    assert parsed.hf_dialect == "4.x" and parsed.replace(hf_dialect="5.x") == five
    untied = json.loads(json.dumps(base))
    del untied["tie_word_embeddings"]
    untied["text_config"]["tie_word_embeddings"] = False
    assert not ModelConfig.from_hf_dict(untied).tie_word_embeddings


def test_sharded_load_over_a_mesh(tmp_path):
    make_checkpoint(tmp_path, tied=False)
    plain = bj.load_pretrained(tmp_path)
    mesh = make_mesh((2, 2, 2))
    sharded = bj.load_pretrained(tmp_path, mesh=mesh)
    q = sharded.params["language_model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert len(q.sharding.device_set) == 8 and not q.sharding.is_fully_replicated
    for a, b in zip(jax.tree_util.tree_leaves(plain.params), jax.tree_util.tree_leaves(sharded.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    conv = tmp_path / "conv"
    hf.save_converted(sharded.params, sharded.config, sharded.source["hf_config"], str(conv))
    again = bj.load_pretrained(conv, mesh=mesh)
    q2 = again.params["language_model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q2.sharding == q.sharding
    np.testing.assert_array_equal(np.asarray(q2), np.asarray(q))


# ------------------------------------------------------------------------------------------------ bad input
@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "ckpt"
    make_checkpoint(path, tied=True)
    return path


def rewrite_config(path, fn):
    cfg = json.load(open(path / "config.json"))
    fn(cfg)
    json.dump(cfg, open(path / "config.json", "w"))


def test_missing_directory_and_files(tmp_path, ckpt):
    with pytest.raises(hf.CheckpointError, match="not found"):
        bj.load_pretrained(tmp_path / "nope")
    os.remove(ckpt / "model.safetensors")
    with pytest.raises(hf.CheckpointError, match="no model.safetensors"):
        bj.load_pretrained(ckpt)
    os.remove(ckpt / "config.json")
    with pytest.raises(hf.CheckpointError, match="no config.json"):
        bj.load_pretrained(ckpt)


def test_truncated_and_corrupt_safetensors(ckpt):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(hf.CheckpointError, match="truncated.*model.safetensors|model.safetensors.*truncated"):
        bj.load_pretrained(ckpt)
    (ckpt / "model.safetensors").write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(hf.CheckpointError, match="corrupt header"):
        bj.load_pretrained(ckpt)


def test_unsupported_model_type_and_missing_field(ckpt):
    rewrite_config(ckpt, lambda c: c.update(model_type="llama"))
    with pytest.raises(ConfigError, match="unsupported model_type 'llama'"):
        bj.load_pretrained(ckpt)
    rewrite_config(ckpt, lambda c: (c.update(model_type="qwen3_vl"), c["text_config"].pop("num_hidden_layers"),
                                    c["vision_config"].pop("depth")))
    with pytest.raises(ConfigError, match=r"text_config\.num_hidden_layers.*vision_config\.depth"):
        bj.load_pretrained(ckpt)


def test_wrong_shapes_missing_and_unexpected_tensors_in_one_error(ckpt):
    tensors = load_file(ckpt / "model.safetensors")
    tensors["model.language_model.layers.1.mlp.up_proj.weight"] = np.zeros((3, 3), np.float32)
    del tensors["model.visual.merger.norm.bias"]
    tensors["model.language_model.layers.9.extra.weight"] = np.zeros((2,), np.float32)
    from safetensors.numpy import save_file

    save_file(tensors, ckpt / "model.safetensors")
    with pytest.raises(hf.CheckpointError) as e:
        bj.load_pretrained(ckpt)
    msg = str(e.value)
    assert "layers.1.mlp.up_proj.weight" in msg and "[3, 3]" in msg
    assert "missing tensor model.visual.merger.norm.bias" in msg
    assert "unexpected tensor model.language_model.layers.9.extra.weight" in msg


def test_failed_conversion_leaves_no_destination(tmp_path, ckpt):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[:-100])
    dst = tmp_path / "dst"
    r = run_script("hf_to_jax.py", ckpt, dst)
    assert r.returncode == 1 and "truncated" in r.stderr
    assert not dst.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".dst")], "temp dir left behind"


def test_export_refuses_non_converted_dir(tmp_path, ckpt):
    r = run_script("jax_to_hf.py", ckpt, tmp_path / "out")
    assert r.returncode == 1 and "not a bard_jax directory" in r.stderr
    shutil.rmtree(ckpt)
