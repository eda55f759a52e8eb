"""HF -> our converted format -> HF: byte-identical directories, transformers loads the export, the converted
format (shardings, dtypes, side files, errors), atomic output directories, and the two command-line scripts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest

pytest.importorskip("torch", reason="compares against transformers' torch models (the test extras)")
import torch
from helpers_hf import make_tiny_hf_checkpoint, read_raw_tensors
from transformers import Qwen3VLForConditionalGeneration

from bard_jax import hf
from bard_jax.config import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDE = {"tokenizer_config.json": '{"model_max_length": 8}', "chat_template.jinja": "{{ messages }}",
        "vocab.json": '{"a": 0}', "merges.txt": "#version: 0.2\n", "preprocessor_config.json": '{"patch_size": 16}'}
VARIANTS = {  # name -> (make_tiny_hf_checkpoint kwargs, max shard size used by the source)
    "tied_f32": (dict(tied=True), "5GB"),
    "untied_bf16_shards": (dict(tied=False, dtype="bfloat16", shards="200KB"), "200KB"),
    "bard_vl_4x_tie_in_text": (dict(tied=True, dtype="bfloat16", dialect="4.x", model_type="bard_vl",
                                    tie_in="text"), "5GB"),
    "qwen_4x_untied_shards": (dict(tied=False, dialect="4.x", shards="300KB", deepstack=(1,)), "300KB"),
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_src")
    out = {}
    for name, (kw, _) in VARIANTS.items():
        path = make_tiny_hf_checkpoint(root / name, **kw)
        for fname, text in SIDE.items():
            (root / name / fname).write_text(text)
        out[name] = path
    return out


def files_of(path):
    return {f: open(os.path.join(path, f), "rb").read() for f in sorted(os.listdir(path))}


def no_temp_dirs(parent):
    return not [p for p in os.listdir(parent) if ".partial-" in p or ".old-" in p]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_round_trip_is_byte_identical(tmp_path, sources, variant):
    """HF -> convert_hf -> load_converted -> export_hf writes back exactly the source directory's bytes: tensors,
    shard layout and index, config.json (dialect, model_type, where tie_word_embeddings sits), side files."""
    src, ours, back = sources[variant], tmp_path / "ours", tmp_path / "back"
    hf.convert_hf(src, ours)
    assert set(SIDE) <= set(os.listdir(ours)) and os.path.isfile(ours / "generation_config.json")
    params, config, raw = hf.load_converted(ours, dtype=None)
    hf.export_hf(params, config, raw, back, max_shard_bytes=VARIANTS[variant][1], side_files_from=ours)
    a, b = files_of(src), files_of(back)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], f"{name} differs after the round trip"
    assert no_temp_dirs(tmp_path)
    cfg = json.loads(a["config.json"])
    if cfg["model_type"] == "qwen3_vl":  # transformers itself loads the export, every key accounted for
        model, info = Qwen3VLForConditionalGeneration.from_pretrained(back, dtype="auto", output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
        want = Qwen3VLForConditionalGeneration.from_pretrained(src, dtype="auto").state_dict()
        for k, v in model.state_dict().items():
            assert torch.equal(v, want[k]), k


def test_in_memory_save_converted_equals_streaming_convert(tmp_path, sources):
    src = sources["untied_bf16_shards"]
    config, raw = hf.read_hf_config(src)
    params = hf.load_hf_params(src, config, dtype=None)
    hf.save_converted(params, config, raw, tmp_path / "a", side_files_from=src)
    hf.convert_hf(src, tmp_path / "b")
    host = jax.tree_util.tree_map(np.asarray, params)  # training export saves host (numpy) arrays
    hf.save_converted(host, config, raw, tmp_path / "c")
    ref = hf.load_converted(tmp_path / "b", dtype=None)[0]
    for d in ("a", "c"):
        got = hf.load_converted(tmp_path / d, dtype=None)[0]
        jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), got, ref)
    markers = [json.load(open(tmp_path / d / hf.CONVERTED_MARKER)) for d in "abc"]
    assert markers[0] == markers[1] == markers[2]


def test_converted_dtypes_and_shardings(tmp_path, sources):
    src = sources["untied_bf16_shards"]
    hf.convert_hf(src, tmp_path / "f32", dtype="float32")
    up, _, _ = hf.load_converted(tmp_path / "f32", dtype=None)
    assert {x.dtype for x in jax.tree_util.tree_leaves(up)} == {np.dtype(np.float32)}
    config, _ = hf.read_hf_config(src)
    want = hf.load_hf_params(src, config, dtype="float32")
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), up, want)
    down, _, _ = hf.load_converted(tmp_path / "f32", dtype="bfloat16")
    assert {x.dtype for x in jax.tree_util.tree_leaves(down)} == {np.dtype(ml_dtypes.bfloat16)}
    # Sharded restore: each device holds (and read) only its slice.
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(8), ("x",))
    spec = jax.sharding.PartitionSpec

    def sharding_fn(path, shape):
        if len(shape) == 3 and shape[-1] % 8 == 0:
            return jax.sharding.NamedSharding(mesh, spec(None, None, "x"))
        return None

    sharded, _, _ = hf.load_converted(tmp_path / "f32", dtype="float32", sharding_fn=sharding_fn)
    up_proj = sharded["language_model"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert up_proj.sharding.spec == spec(None, None, "x") and up_proj.addressable_shards[0].data.shape == (3, 64, 16)
    assert sharded["language_model"]["norm"]["scale"].sharding.device_set == {jax.devices()[0]}
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), sharded, want)


def test_export_shards_above_the_threshold_only(tmp_path, sources):
    params, config, raw = hf.load_converted(hf.convert_hf(sources["tied_f32"], tmp_path / "ours"), dtype=None)
    hf.export_hf(params, config, raw, tmp_path / "one", max_shard_bytes="5GB")
    assert sorted(os.listdir(tmp_path / "one")) == ["config.json", "model.safetensors"]
    hf.export_hf(params, config, raw, tmp_path / "many", max_shard_bytes="150KB")
    index = json.load(open(tmp_path / "many" / "model.safetensors.index.json"))
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    for f in files:  # data under the limit, unless one tensor alone is larger (patch_embed: 32 x 1536 x 4 bytes)
        tensors = [n for n, v in index["weight_map"].items() if v == f]
        assert len(tensors) == 1 or os.path.getsize(tmp_path / "many" / f) < 150_000 + 4096, f
    assert read_raw_tensors(tmp_path / "many") == read_raw_tensors(tmp_path / "one")
    assert "lm_head.weight" not in index["weight_map"]  # tied: the head is not duplicated
    assert index["metadata"]["total_size"] == sum(
        np.prod(s) * 4 for _, s, _ in read_raw_tensors(tmp_path / "one").values())


# ------------------------------------------------------------------------------------------------ errors
def test_export_refuses_a_tree_that_does_not_match(tmp_path, sources):
    params, config, raw = hf.load_converted(hf.convert_hf(sources["tied_f32"], tmp_path / "ours"), dtype=None)
    params = jax.tree_util.tree_map(np.asarray, params)
    del params["visual"]["merger"]["norm"]["bias"]
    params["language_model"]["norm"]["scale"] = np.zeros(3, np.float32)
    params["lm_head"] = {"kernel": np.zeros((64, 512), np.float32)}
    params["visual"]["pos_embed"]["embedding"] = params["visual"]["pos_embed"]["embedding"].astype(np.int32)
    with pytest.raises(hf.CheckpointError) as e:
        hf.export_hf(params, config, raw, tmp_path / "out")
    msg = str(e.value)
    assert "missing parameter visual/merger/norm/bias (expected shape [32])" in msg
    assert "parameter language_model/norm/scale has shape [3], expected [64]" in msg
    assert "unexpected parameter lm_head/kernel" in msg
    assert "parameter visual/pos_embed/embedding has dtype int32" in msg
    assert not (tmp_path / "out").exists() and no_temp_dirs(tmp_path)


def test_failed_write_keeps_the_previous_directory(tmp_path, sources, monkeypatch):
    params, config, raw = hf.load_converted(hf.convert_hf(sources["tied_f32"], tmp_path / "ours"), dtype=None)
    out = tmp_path / "out"
    hf.export_hf(params, config, raw, out)
    before = files_of(out)

    def boom(*args, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(hf.export, "_write_files", boom)
    with pytest.raises(OSError, match="disk full"):
        hf.export_hf(params, config, raw, out)
    assert files_of(out) == before and no_temp_dirs(tmp_path)
    monkeypatch.undo()
    hf.export_hf(params, config, raw, out, max_shard_bytes="150KB")  # a successful write replaces it
    assert "model.safetensors.index.json" in os.listdir(out) and no_temp_dirs(tmp_path)


def test_converted_dir_errors(tmp_path, sources):
    ours = tmp_path / "ours"
    hf.convert_hf(sources["untied_bf16_shards"], ours)
    with pytest.raises(hf.CheckpointError, match="converted directory not found"):
        hf.load_converted(tmp_path / "nope")
    marker = json.load(open(ours / hf.CONVERTED_MARKER))
    bad = json.loads(json.dumps(marker))
    bad["hf_config"]["text_config"]["num_hidden_layers"] = 2
    json.dump(bad, open(ours / hf.CONVERTED_MARKER, "w"))
    with pytest.raises(ConfigError, match="'config' and 'hf_config' describe different models"):
        hf.load_converted(ours)
    del bad["config"]  # without our config the HF config alone decides: then the stored tree does not match
    json.dump(bad, open(ours / hf.CONVERTED_MARKER, "w"))
    with pytest.raises(hf.CheckpointError, match=r"parameter language_model/layers/input_layernorm/scale has "
                                                 r"shape \[3, 64\], expected \[2, 64\]"):
        hf.load_converted(ours)
    json.dump(marker, open(ours / hf.CONVERTED_MARKER, "w"))
    part = ours / "params" / "part-00000"
    shutil.rmtree(part / "language_model.embed_tokens.embedding")
    os.remove(part / "commit_success.txt")
    with pytest.raises(hf.CheckpointError) as e:
        hf.load_converted(ours)
    assert "missing parameter language_model/embed_tokens/embedding (expected shape [512, 64])" in str(e.value)
    assert "part-00000: unfinished orbax checkpoint" in str(e.value)
    shutil.rmtree(ours / "params")
    with pytest.raises(hf.CheckpointError, match="missing params/ directory"):
        hf.load_converted(ours)
    (ours / hf.CONVERTED_MARKER).write_text("{}")
    with pytest.raises(hf.CheckpointError, match="not a bard_jax config"):
        hf.load_converted(ours)


# ------------------------------------------------------------------------------------------------ scripts
def run_script(name, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "convert", name), *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_command_line_scripts(tmp_path, sources):
    src = sources["untied_bf16_shards"]
    r = run_script("hf_to_jax.py", src, tmp_path / "ours")
    assert r.returncode == 0, r.stderr
    r = run_script("jax_to_hf.py", tmp_path / "ours", tmp_path / "back", "--max-shard-size", "200KB")
    assert r.returncode == 0, r.stderr
    assert files_of(src) == files_of(tmp_path / "back")
    # Failures: one message, exit status 1, no complete-looking (or temporary) destination left behind.
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    shard = bad / "model-00003-of-00004.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    r = run_script("hf_to_jax.py", bad, tmp_path / "dst")
    assert r.returncode == 1 and "model-00003-of-00004.safetensors: truncated" in r.stderr
    r = run_script("jax_to_hf.py", src, tmp_path / "dst2")
    assert r.returncode == 1 and "not a bard_jax directory" in r.stderr
    assert not (tmp_path / "dst").exists() and not (tmp_path / "dst2").exists() and no_temp_dirs(tmp_path)
