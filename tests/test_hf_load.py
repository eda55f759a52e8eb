"""Loading HF checkpoints: exact values against transformers' own state dict, the parameter-tree contract, name
aliases, dtypes, shardings, and one clear error for every kind of bad input."""

from __future__ import annotations

import json
import os
import shutil
import struct

import jax
import ml_dtypes
import numpy as np
import pytest

pytest.importorskip("torch", reason="compares against transformers' torch models (the test extras)")
import torch
from helpers_hf import make_tiny_hf_checkpoint
from safetensors.torch import load_file, save_file
from transformers import Qwen3VLForConditionalGeneration

from bard_jax import hf
from bard_jax.config import ConfigError, preset

VARIANTS = {  # name -> make_tiny_hf_checkpoint kwargs
    "tied_f32": dict(tied=True),
    "untied_bf16_shards": dict(tied=False, dtype="bfloat16", shards=True),
}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_load")
    return {name: make_tiny_hf_checkpoint(root / name, **kw) for name, kw in VARIANTS.items()}


def torch_state_dict(path):
    model = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype="auto")
    return {k: v.detach() for k, v in model.state_dict().items()}


def expected_tree(sd, config):
    """Our tree built independently from a torch state dict: Linear weight [out, in] -> kernel [in, out], the
    Conv3d weight [D, C, T, P, P] -> [C*T*P*P, D], norms -> scale, layers stacked on axis 0."""
    def lin(name):
        return sd[name].T

    def conv(name):
        return sd[name].reshape(sd[name].shape[0], -1).T

    def stack(fn, fmt, n):
        return torch.stack([fn(fmt.format(i)) for i in range(n)])

    def same(name):
        return sd[name]

    t, v = config.text, config.vision
    vb = "model.visual.blocks.{}."
    blocks = {
        "norm1": {"scale": stack(same, vb + "norm1.weight", v.depth), "bias": stack(same, vb + "norm1.bias", v.depth)},
        "norm2": {"scale": stack(same, vb + "norm2.weight", v.depth), "bias": stack(same, vb + "norm2.bias", v.depth)},
    }
    for mod, names in (("attn", ("qkv", "proj")), ("mlp", ("linear_fc1", "linear_fc2"))):
        blocks[mod] = {n: {"kernel": stack(lin, vb + f"{mod}.{n}.weight", v.depth),
                           "bias": stack(same, vb + f"{mod}.{n}.bias", v.depth)} for n in names}

    def merger(fmt, fn):
        return {n: {("scale" if n == "norm" else "kernel"): fn(same if n == "norm" else lin, fmt + f"{n}.weight"),
                    "bias": fn(same, fmt + f"{n}.bias")} for n in ("norm", "linear_fc1", "linear_fc2")}

    visual = {
        "patch_embed": {"proj": {"kernel": conv("model.visual.patch_embed.proj.weight"),
                                 "bias": sd["model.visual.patch_embed.proj.bias"]}},
        "pos_embed": {"embedding": sd["model.visual.pos_embed.weight"]},
        "blocks": blocks,
        "merger": merger("model.visual.merger.", lambda f, n: f(n)),
    }
    if v.deepstack_visual_indexes:
        k = len(v.deepstack_visual_indexes)
        visual["deepstack_merger_list"] = merger("model.visual.deepstack_merger_list.{}.",
                                                 lambda f, n: stack(f, n, k))
    lay, n = "model.language_model.layers.{}.", t.num_hidden_layers
    layers = {
        "input_layernorm": {"scale": stack(same, lay + "input_layernorm.weight", n)},
        "post_attention_layernorm": {"scale": stack(same, lay + "post_attention_layernorm.weight", n)},
        "self_attn": {p: {"kernel": stack(lin, lay + f"self_attn.{p}.weight", n)}
                      for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
        "mlp": {p: {"kernel": stack(lin, lay + f"mlp.{p}.weight", n)} for p in ("gate_proj", "up_proj", "down_proj")},
    }
    layers["self_attn"]["q_norm"] = {"scale": stack(same, lay + "self_attn.q_norm.weight", n)}
    layers["self_attn"]["k_norm"] = {"scale": stack(same, lay + "self_attn.k_norm.weight", n)}
    tree = {
        "visual": visual,
        "language_model": {"embed_tokens": {"embedding": sd["model.language_model.embed_tokens.weight"]},
                           "layers": layers, "norm": {"scale": sd["model.language_model.norm.weight"]}},
    }
    if not config.tie_word_embeddings:
        tree["lm_head"] = {"kernel": lin("lm_head.weight")}
    return tree


def bits(x):
    """Exact bit pattern of a torch tensor or numpy / jax array (bf16 included)."""
    if isinstance(x, torch.Tensor):
        return x.contiguous().view({2: torch.int16, 4: torch.int32}[x.element_size()]).numpy()
    x = np.asarray(x)
    return x.view({2: np.int16, 4: np.int32}[x.dtype.itemsize])


def assert_same_tree(ours, want):
    a, b = jax.tree_util.tree_flatten_with_path(ours), jax.tree_util.tree_flatten_with_path(want)
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(want)
    for (path, x), (_, y) in zip(a[0], b[0]):
        assert x.dtype.itemsize == y.element_size(), path
        np.testing.assert_array_equal(bits(x), bits(y), err_msg=jax.tree_util.keystr(path))


# ------------------------------------------------------------------------------------------------ values
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_loaded_params_equal_torch_state_dict_bitwise(ckpts, variant):
    path = ckpts[variant]
    config, _ = hf.read_hf_config(path)
    params = hf.load_hf_params(path, config, dtype=None)  # keep the stored dtype
    stored = ml_dtypes.bfloat16 if VARIANTS[variant].get("dtype") == "bfloat16" else np.float32
    assert {np.dtype(x.dtype) for x in jax.tree_util.tree_leaves(params)} == {np.dtype(stored)}
    assert jax.tree_util.tree_map(lambda x: tuple(x.shape), params) == hf.param_shapes(config)
    assert_same_tree(params, expected_tree(torch_state_dict(path), config))


def test_dtype_conversion_matches_torch_rounding(ckpts):
    f32, b16 = ckpts["tied_f32"], ckpts["untied_bf16_shards"]
    config, _ = hf.read_hf_config(f32)
    down = hf.load_hf_params(f32, config, dtype="bfloat16")  # f32 file -> bf16: round to nearest even, like torch
    sd = {k: v.to(torch.bfloat16) for k, v in torch_state_dict(f32).items()}
    assert_same_tree(down, expected_tree(sd, config))
    config, _ = hf.read_hf_config(b16)
    up = hf.load_hf_params(b16, config, dtype="float32")  # bf16 file -> f32: exact
    sd = {k: v.float() for k, v in torch_state_dict(b16).items()}
    assert_same_tree(up, expected_tree(sd, config))


def test_param_shapes_is_the_model_contract():
    """param_shapes (from the name table) equals the tree the Flax model initialises, for several configs."""
    from bard_jax.modeling import init_params

    tiny = preset("tiny")
    no_deepstack = tiny.replace(vision=tiny.vision.__class__(**{**tiny.vision.__dict__,
                                                                "deepstack_visual_indexes": ()}))
    for config in (tiny, tiny.replace(tie_word_embeddings=False), no_deepstack):
        model_tree = jax.eval_shape(lambda c=config: init_params(c, jax.random.key(0)))
        assert jax.tree_util.tree_map(lambda x: tuple(x.shape), model_tree) == hf.param_shapes(config)
    shapes = hf.param_shapes(tiny.replace(tie_word_embeddings=False))
    v, t = tiny.vision, tiny.text
    assert shapes["visual"]["patch_embed"]["proj"]["kernel"] == (3 * 2 * 16 * 16, v.hidden_size)
    assert shapes["visual"]["deepstack_merger_list"]["norm"]["scale"] == (1, 4 * v.hidden_size)
    assert shapes["visual"]["merger"]["norm"]["scale"] == (v.hidden_size,)
    assert shapes["language_model"]["layers"]["self_attn"]["k_proj"]["kernel"] == (2, 64, 2 * 32)
    assert shapes["lm_head"]["kernel"] == (t.hidden_size, t.vocab_size)
    assert "lm_head" not in hf.param_shapes(tiny)
    assert "deepstack_merger_list" not in hf.param_shapes(no_deepstack)["visual"]


def rename_tensors(path, fn):
    for f in os.listdir(path):
        if f.endswith(".safetensors"):
            tensors = load_file(os.path.join(path, f))
            save_file({fn(k): v for k, v in tensors.items()}, os.path.join(path, f), metadata={"format": "pt"})
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        d = json.load(open(index))
        d["weight_map"] = {fn(k): v for k, v in d["weight_map"].items()}
        json.dump(d, open(index, "w"))


@pytest.mark.parametrize("layout", ["base_model", "duplicated_model_model"])
def test_layouts_transformers_accepts_load_the_same(tmp_path, ckpts, layout):
    """transformers 5.23 loads `visual.* / language_model.*` (a bare Qwen3VLModel save) and the duplicated
    `model.language_model.model.*` of some 5.x saves; so do we, to the same values."""
    src = ckpts["untied_bf16_shards"]
    shutil.copytree(src, tmp_path / "c")
    if layout == "base_model":
        rename_tensors(tmp_path / "c", lambda k: k[len("model."):] if k.startswith("model.") else k)
    else:
        rename_tensors(tmp_path / "c", lambda k: k.replace("model.language_model.", "model.language_model.model."))
    config, _ = hf.read_hf_config(src)
    want = hf.load_hf_params(src, config, dtype=None)
    got = hf.load_hf_params(tmp_path / "c", config, dtype=None)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(bits(a), bits(b)), got, want)
    _, info = Qwen3VLForConditionalGeneration.from_pretrained(tmp_path / "c", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # the layout really is one transformers takes


def test_tied_checkpoint_may_carry_an_equal_head_only(tmp_path, ckpts):
    path = tmp_path / "c"
    shutil.copytree(ckpts["tied_f32"], path)
    tensors = load_file(path / "model.safetensors")
    emb = tensors["model.language_model.embed_tokens.weight"]
    save_file({**tensors, "lm_head.weight": emb.clone()}, path / "model.safetensors", metadata={"format": "pt"})
    config, _ = hf.read_hf_config(path)
    hf.load_hf_params(path, config)  # an exact copy is fine
    head = emb.clone()
    head[-1, 0] += 1.0
    save_file({**tensors, "lm_head.weight": head}, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(hf.CheckpointError, match=r"lm_head\.weight .*differs from .*embed_tokens.*rows 0\.\.511"):
        hf.load_hf_params(path, config)


def test_sharding_fn_places_each_parameter(ckpts):
    path = ckpts["untied_bf16_shards"]
    config, _ = hf.read_hf_config(path)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("a", "b"))
    calls = {}

    def sharding_fn(p, shape):
        calls[p] = shape
        if p[-1] == "kernel" and shape[-1] % 4 == 0:
            spec = (None,) * (len(shape) - 1) + ("b",)
            return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
        return None  # the default device

    params = hf.load_hf_params(path, config, dtype="float32", sharding_fn=sharding_fn)
    plain = hf.load_hf_params(path, config, dtype="float32")
    flat = {tuple(k.key for k in p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert calls == {p: tuple(x.shape) for p, x in flat.items()}
    q = params["language_model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, None, "b") and len(q.sharding.device_set) == 8
    assert q.addressable_shards[0].data.shape == (3, 64, 32)
    assert params["language_model"]["norm"]["scale"].sharding.device_set == {jax.devices()[0]}
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, plain)


def test_progress_bar_for_large_checkpoints(ckpts, monkeypatch, capsys):
    monkeypatch.setattr(hf.common, "PROGRESS_MIN_BYTES", 1)
    config, _ = hf.read_hf_config(ckpts["tied_f32"])
    hf.load_hf_params(ckpts["tied_f32"], config)
    assert "loading tied_f32" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ bad input
@pytest.fixture
def ckpt(tmp_path, ckpts):
    shutil.copytree(ckpts["tied_f32"], tmp_path / "ckpt")
    return tmp_path / "ckpt"


def load(path):
    config, _ = hf.read_hf_config(path)
    return hf.load_hf_params(path, config)


def edit_config(path, fn):
    cfg = json.load(open(path / "config.json"))
    fn(cfg)
    json.dump(cfg, open(path / "config.json", "w"))


def test_missing_directory_file_and_config(tmp_path, ckpt):
    with pytest.raises(hf.CheckpointError, match="checkpoint directory not found: .*nope"):
        load(tmp_path / "nope")
    with pytest.raises(hf.CheckpointError, match="not a directory"):
        load(ckpt / "model.safetensors")
    (ckpt / "config.json").write_text("{bad json")
    with pytest.raises(ConfigError, match=r"config\.json: not valid JSON"):
        load(ckpt)
    os.remove(ckpt / "config.json")
    with pytest.raises(hf.CheckpointError, match="no config.json"):
        load(ckpt)


def test_unsupported_model_type_and_missing_fields(ckpt):
    edit_config(ckpt, lambda c: c.update(model_type="llama"))
    with pytest.raises(ConfigError, match=r"config\.json: unsupported model_type 'llama'"):
        load(ckpt)
    edit_config(ckpt, lambda c: (c.update(model_type="qwen3_vl"), c["text_config"].pop("num_hidden_layers"),
                                 c["vision_config"].pop("depth")))
    with pytest.raises(ConfigError, match=r"text_config\.num_hidden_layers.*vision_config\.depth"):
        load(ckpt)


def test_missing_weights_files(ckpt, ckpts, tmp_path):
    os.rename(ckpt / "model.safetensors", ckpt / "model-00001-of-00001.safetensors")
    with pytest.raises(hf.CheckpointError, match=r"no model\.safetensors and no model\.safetensors\.index\.json "
                                                 r"\(found model-00001-of-00001\.safetensors but no index"):
        load(ckpt)
    sharded = tmp_path / "sharded"
    shutil.copytree(ckpts["untied_bf16_shards"], sharded)
    os.remove(sharded / "model-00002-of-00004.safetensors")
    with pytest.raises(hf.CheckpointError, match=r"model-00002-of-00004\.safetensors: file not found"):
        load(sharded)
    (sharded / "model.safetensors.index.json").write_text('{"weight_map": 3}')
    with pytest.raises(hf.CheckpointError, match=r"index\.json: not a valid safetensors index"):
        load(sharded)


def test_index_promising_a_tensor_its_shard_lacks(tmp_path, ckpts):
    path = tmp_path / "c"
    shutil.copytree(ckpts["untied_bf16_shards"], path)
    index = json.load(open(path / "model.safetensors.index.json"))
    index["weight_map"]["model.visual.extra.weight"] = "model-00001-of-00004.safetensors"
    json.dump(index, open(path / "model.safetensors.index.json", "w"))
    with pytest.raises(hf.CheckpointError, match=r"lists tensor model\.visual\.extra\.weight in "
                                                 r"model-00001-of-00004\.safetensors, which does not contain it"):
        load(path)


def test_truncated_and_corrupt_safetensors(ckpt):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-100])  # data shorter than the header says
    with pytest.raises(hf.CheckpointError, match=r"model\.safetensors: truncated: tensor .* ends at byte"):
        load(ckpt)
    f.write_bytes(data[:5])
    with pytest.raises(hf.CheckpointError, match=r"model\.safetensors: truncated \(no header length\)"):
        load(ckpt)
    f.write_bytes(struct.pack("<Q", 10**12) + data[8:])
    with pytest.raises(hf.CheckpointError, match=r"model\.safetensors: corrupt header length"):
        load(ckpt)
    n = struct.unpack("<Q", data[:8])[0]
    f.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(hf.CheckpointError, match=r"model\.safetensors: corrupt header"):
        load(ckpt)
    header = json.loads(data[8:8 + n])
    header["model.language_model.norm.weight"]["shape"] = [65]  # offsets no longer match the shape
    blob = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    f.write_bytes(data[:8] + blob[:n] + data[8 + n:])
    with pytest.raises(hf.CheckpointError, match=r"norm\.weight' spans 256 bytes, its shape needs 260"):
        load(ckpt)


def test_every_tensor_problem_in_one_error(ckpt):
    tensors = load_file(ckpt / "model.safetensors")
    tensors["model.language_model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    del tensors["model.visual.merger.norm.bias"]
    tensors["model.language_model.layers.3.mlp.up_proj.weight"] = torch.zeros(2)
    tensors["model.visual.blocks.0.attn.qkv.bias"] = torch.zeros(96, dtype=torch.int32)
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(hf.CheckpointError) as e:
        load(ckpt)
    msg = str(e.value)
    assert "model.safetensors" in msg and "checkpoint does not match its config.json (5 problem(s))" in msg
    assert "tensor model.language_model.layers.1.mlp.up_proj.weight in model.safetensors has shape [3, 3], " \
           "expected [128, 64]" in msg
    assert "missing tensor model.visual.merger.norm.bias (expected shape [32])" in msg
    assert "unexpected tensor model.language_model.layers.3.mlp.up_proj.weight in model.safetensors" in msg
    assert "model.visual.blocks.0.attn.qkv.bias in model.safetensors has non-float dtype int32" in msg
    assert "config.json says text_config.num_hidden_layers = 3, the tensors have 4" in msg


def test_config_that_does_not_match_the_tensors(ckpt):
    edit_config(ckpt, lambda c: c["text_config"].update(num_hidden_layers=2, intermediate_size=96))
    with pytest.raises(hf.CheckpointError) as e:
        load(ckpt)
    msg = str(e.value)
    assert "unexpected tensor model.language_model.layers.2.mlp.up_proj.weight" in msg
    assert "tensor model.language_model.layers.0.mlp.gate_proj.weight in model.safetensors has shape [128, 64], " \
           "expected [96, 64]" in msg
    assert "config.json says text_config.num_hidden_layers = 2, the tensors have 3" in msg
