"""config.json dialects: transformers 4.x / 5.x rotary settings, tie_word_embeddings at the top or in text_config,
qwen3_vl / bard_vl; parsing, writing back in the same dialect, loading a BARD-VL directory unchanged, and the
release's own tied checkpoints (written by transformers 4.57: false at the top, true in text_config)."""

from __future__ import annotations

import copy
import json

import jax
import numpy as np
import pytest

pytest.importorskip("torch", reason="compares against transformers' torch models (the test extras)")
import safetensors.torch
import torch
from helpers_hf import (
    make_tiny_hf_checkpoint,
    read_raw_tensors,
    rewrite_config,
    tiny_hf_config,
    tiny_hf_model,
)
from transformers import Qwen3VLForConditionalGeneration

import bard_jax as bj
from bard_jax import hf
from bard_jax.config import ConfigError, ModelConfig
from bard_jax.sharding import make_mesh


@pytest.fixture(scope="module")
def saved_5x(tmp_path_factory):
    """The config.json dict transformers 5.x `save_pretrained` writes for the tiny model."""
    path = make_tiny_hf_checkpoint(tmp_path_factory.mktemp("cfg") / "c")
    with open(f"{path}/config.json") as f:
        return json.load(f)


def variant(d, **kw):
    return rewrite_config(copy.deepcopy(d), **kw)


def test_dialects_parse_to_the_same_network(saved_5x):
    five = ModelConfig.from_hf_dict(saved_5x)
    assert five.hf_dialect == "5.x" and five.model_type == "qwen3_vl" and five.tie_word_embeddings
    t, v = five.text, five.vision
    assert (t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.head_dim) == (64, 4, 2, 32)
    assert (t.rope_theta, t.mrope_section, t.mrope_interleaved, t.vocab_size) == (5e6, (6, 5, 5), True, 512)
    assert (v.depth, v.hidden_size, v.num_heads, v.deepstack_visual_indexes) == (3, 32, 2, (0, 1))
    assert (five.image_token_id, five.video_token_id, five.vision_start_token_id) == (500, 501, 502)
    for kw in (dict(dialect="4.x"), dict(tie_in="text"), dict(dialect="4.x", tie_in="text", model_type="bard_vl")):
        d = variant(saved_5x, **kw)
        parsed = ModelConfig.from_hf_dict(d)
        assert parsed.hf_dialect == kw.get("dialect", "5.x")
        assert parsed.model_type == kw.get("model_type", "qwen3_vl")
        assert parsed.replace(hf_dialect="5.x", model_type="qwen3_vl") == five, kw
    four = variant(saved_5x, dialect="4.x")
    assert "rope_parameters" not in four["text_config"] and four["text_config"]["rope_scaling"]["mrope_section"]


def test_tie_word_embeddings_location_and_default(saved_5x):
    untied_text = variant(saved_5x, tie_in="text")
    untied_text["text_config"]["tie_word_embeddings"] = False
    assert not ModelConfig.from_hf_dict(untied_text).tie_word_embeddings
    top_wins = copy.deepcopy(saved_5x)
    top_wins["text_config"]["tie_word_embeddings"] = False  # transformers reads the top-level value
    assert ModelConfig.from_hf_dict(top_wins).tie_word_embeddings
    absent = copy.deepcopy(saved_5x)
    del absent["tie_word_embeddings"]
    assert not ModelConfig.from_hf_dict(absent).tie_word_embeddings  # Qwen3VLConfig's default


@pytest.mark.parametrize("kw", [dict(), dict(dialect="4.x"), dict(tie_in="text"),
                                dict(dialect="4.x", tie_in="text", model_type="bard_vl")])
def test_to_hf_dict_writes_the_source_dialect_back_exactly(saved_5x, kw):
    raw = variant(saved_5x, **kw)
    assert ModelConfig.from_hf_dict(raw).to_hf_dict(base=raw) == raw


def test_to_hf_dict_without_a_source(saved_5x):
    cfg = ModelConfig.from_hf_dict(variant(saved_5x, dialect="4.x", model_type="bard_vl"))
    fresh = cfg.to_hf_dict()
    assert fresh["architectures"] == ["BardVLForConditionalGeneration"] and fresh["model_type"] == "bard_vl"
    assert fresh["text_config"]["rope_theta"] == 5e6 and "rope_parameters" not in fresh["text_config"]
    assert ModelConfig.from_hf_dict(fresh) == cfg


def test_config_errors_name_every_field(saved_5x):
    d = copy.deepcopy(saved_5x)
    d["model_type"] = "qwen2_vl"
    with pytest.raises(ConfigError, match=r"x/config\.json: unsupported model_type 'qwen2_vl'"):
        ModelConfig.from_hf_dict(d, source="x/config.json")
    d = copy.deepcopy(saved_5x)
    del d["text_config"]["hidden_size"], d["vision_config"]["num_heads"], d["text_config"]["rope_parameters"]
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_hf_dict(d)
    for field in ("text_config.hidden_size", "vision_config.num_heads", "rope_theta", "mrope_section"):
        assert field in str(e.value)
    d = copy.deepcopy(saved_5x)
    d["text_config"]["rope_parameters"]["mrope_section"] = [8, 5, 5]
    with pytest.raises(ConfigError, match=r"mrope_section \[8, 5, 5\] must sum to head_dim/2 = 16"):
        ModelConfig.from_hf_dict(d)


def test_transformers_reads_our_4x_emulation(tmp_path):
    """The 4.x rewrite the tests use is a config transformers itself accepts (so the dialect tests are real)."""
    path = make_tiny_hf_checkpoint(tmp_path / "c", dialect="4.x", tie_in="text")
    model = Qwen3VLForConditionalGeneration.from_pretrained(path)
    rope = model.config.text_config.rope_parameters
    assert rope["rope_theta"] == 5e6 and rope["mrope_section"] == [6, 5, 5]
    assert hf.read_hf_config(path)[0].hf_dialect == "4.x"


def test_bard_vl_directory_loads_unchanged(tmp_path):
    """A BARD-VL checkpoint (model_type bard_vl, 4.x dialect, tie in text_config) is the same network and the same
    tensors as the Qwen3-VL one it was made from, through the public loader (HF dir and converted dir, on a mesh)."""
    qwen = make_tiny_hf_checkpoint(tmp_path / "qwen", dtype="bfloat16")
    bard = make_tiny_hf_checkpoint(tmp_path / "bard", dtype="bfloat16", dialect="4.x", model_type="bard_vl",
                                   tie_in="text")
    a, b = bj.load_pretrained(qwen, dtype="bfloat16"), bj.load_pretrained(bard, dtype="bfloat16")
    assert b.config.model_type == "bard_vl" and b.config.hf_dialect == "4.x" and b.config.tie_word_embeddings
    assert b.config.replace(model_type="qwen3_vl", hf_dialect="5.x") == a.config
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                           a.params, b.params)
    hf.convert_hf(bard, tmp_path / "ours")
    mesh = make_mesh((2, 2, 2))
    c = bj.load_pretrained(tmp_path / "ours", dtype="bfloat16", mesh=mesh)
    assert c.config == b.config and c.source["hf_config"] == json.load(open(tmp_path / "bard" / "config.json"))
    q = c.params["language_model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert len(q.sharding.device_set) == 8 and not q.sharding.is_fully_replicated
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                           c.params, b.params)


# ------------------------------------------------------------------------------------------------ release checkpoints
def release_config_4_57(model_type: str) -> dict:
    """config.json as transformers 4.57.3 `save_pretrained` writes a tied tiny model (the shapes of helpers_hf) with
    the release's BardVLConfig (model_type bard_vl) or with Qwen3VLConfig: the composite class keeps its default
    `tie_word_embeddings: false` at the top level and the text config carries `true`. Key for key what 4.57.3
    wrote for these shapes (float32 weights), transcribed here because the test environment runs transformers 5.x.
    """
    bard = model_type == "bard_vl"
    return {
        "architectures": ["BardVLForConditionalGeneration" if bard else "Qwen3VLForConditionalGeneration"],
        "dtype": "float32",
        "image_token_id": 500,
        "model_type": model_type,
        "text_config": {
            "attention_bias": False, "attention_dropout": 0.0, "head_dim": 32, "hidden_act": "silu",
            "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128, "max_position_embeddings": 4096,
            "model_type": "bard_vl_text" if bard else "qwen3_vl_text", "num_attention_heads": 4,
            "num_hidden_layers": 3, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
            "rope_scaling": {"mrope_interleaved": True, "mrope_section": [6, 5, 5], "rope_type": "default"},
            "rope_theta": 5000000.0, "tie_word_embeddings": True, "use_cache": True, "vocab_size": 512,
        },
        "tie_word_embeddings": False,
        "transformers_version": "4.57.3",
        "video_token_id": 501,
        "vision_config": {
            "deepstack_visual_indexes": [0, 1], "depth": 3, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 32,
            "in_channels": 3, "initializer_range": 0.02, "intermediate_size": 64,
            "model_type": "bard_vl" if bard else "qwen3_vl", "num_heads": 2, "num_position_embeddings": 64,
            "out_hidden_size": 64, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
        },
        "vision_end_token_id": 503,
        "vision_start_token_id": 502,
    }


@pytest.fixture(scope="module")
def tied_model():
    return tiny_hf_model(seed=3, tied=True)


@pytest.mark.parametrize("model_type", ["bard_vl", "qwen3_vl"])
def test_tied_checkpoint_written_by_transformers_4_57_loads_tied(tmp_path, tied_model, model_type):
    path = tmp_path / "release"
    tied_model.save_pretrained(path)  # a tied model's tensors: no lm_head.weight (as 4.57 writes them too)
    assert "lm_head.weight" not in read_raw_tensors(path)
    with open(path / "config.json", "w") as f:
        f.write(json.dumps(release_config_4_57(model_type), indent=2, sort_keys=True) + "\n")

    ours = bj.load_pretrained(path, dtype="float32")
    assert ours.config.tie_word_embeddings and ours.config.hf_dialect == "4.x"
    assert "text_config flag is read" in ours.config.tie_source

    # transformers with the head tied by hand: an untied model given the file's tensors and head := embedding.
    reference = Qwen3VLForConditionalGeneration(tiny_hf_config(tied=False)).eval()
    state = safetensors.torch.load_file(path / "model.safetensors")
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert missing == ["lm_head.weight"] and not unexpected
    with torch.no_grad():
        reference.lm_head.weight.copy_(reference.model.language_model.embed_tokens.weight)
    ids = np.random.default_rng(0).integers(0, 500, (2, 24))
    with torch.no_grad():
        want = reference(input_ids=torch.from_numpy(ids)).logits.numpy()
    got = np.asarray(bj.forward(ours, ids))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)

    # Export keeps the dialect and the flag the 4.x reader uses; the top-level flag now agrees, so 5.x reads it
    # tied as well, and the file still has no duplicate head.
    hf.export_hf(ours.params, ours.config, ours.source["hf_config"], tmp_path / "exported")
    exported = json.load(open(tmp_path / "exported" / "config.json"))
    assert exported["text_config"]["tie_word_embeddings"] is True and exported["tie_word_embeddings"] is True
    assert "rope_scaling" in exported["text_config"] and "lm_head.weight" not in read_raw_tensors(
        tmp_path / "exported")
    assert hf.read_hf_config(tmp_path / "exported")[0] == ours.config


def test_transformers_5_reads_the_top_level_flag(tmp_path, tied_model):
    """Why the dialect decides: transformers 5.x reads the 4.57 file's top-level false and leaves the head at its
    random initialisation, which is what our reading of the 5.x dialect mirrors."""
    path = tmp_path / "release"
    tied_model.save_pretrained(path)
    with open(path / "config.json", "w") as f:
        json.dump(release_config_4_57("qwen3_vl"), f)
    loaded = Qwen3VLForConditionalGeneration.from_pretrained(path)
    assert not loaded.config.tie_word_embeddings
    assert not torch.equal(loaded.lm_head.weight, loaded.model.language_model.embed_tokens.weight)


def test_missing_head_says_which_flag_untied_it(tmp_path, tied_model):
    path = tmp_path / "release"
    tied_model.save_pretrained(path)
    raw = release_config_4_57("bard_vl")
    del raw["text_config"]["tie_word_embeddings"]  # the 4.x flag absent: the top-level false decides
    with open(path / "config.json", "w") as f:
        json.dump(raw, f)
    with pytest.raises(hf.CheckpointError) as e:
        bj.load_pretrained(path)
    message = str(e.value)
    assert "missing tensor lm_head.weight" in message
    assert "top-level tie_word_embeddings=false, text_config.tie_word_embeddings=absent" in message
    assert "top-level flag is read because the text_config flag is absent" in message
