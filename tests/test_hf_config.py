"""config.json dialects: transformers 4.x / 5.x rotary settings, tie_word_embeddings at the top or in text_config,
qwen3_vl / bard_vl; parsing, writing back in the same dialect, and loading a BARD-VL directory unchanged."""

from __future__ import annotations

import copy
import json

import jax
import numpy as np
import pytest
from helpers_hf import make_tiny_hf_checkpoint, rewrite_config
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
