"""Every mistake in a decoding call is an InputError that names the argument, raised before anything is traced or
compiled: `bj.generate`, the AR baseline, `bj.forward`, the settings classes and `python -m bard_jax.generate`."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import bard_jax as bj
from bard_jax import modeling
from bard_jax.errors import BardError, InputError
from bard_jax.model.inputs import check_inputs
from bard_jax.sampler import ar as ar_impl
from bard_jax.sampler import diffusion as sampler_impl
from bard_jax.sampler.ar import ARConfig, generate_ar

MASK, EOS = 1023, 1022
IMG, VID = 1000, 1001  # the tiny preset's placeholders; its spatial merge size is 2
CFG = bj.SamplingConfig(max_new_tokens=8, block_size=4, denoising_steps=2, mask_token_id=MASK, eos_token_id=EOS)
AR = ARConfig(max_new_tokens=4, eos_token_id=EOS)
ENTRIES = ("generate", "ar", "forward")
TRACE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration")
_events: list[str] = []


def _listen(event: str, duration: float, **kw) -> None:
    if event in TRACE_EVENTS:
        _events.append(event)


@pytest.fixture(scope="module")
def model():
    cfg = bj.preset("tiny")
    return bj.Model(bj.init_params(cfg, jax.random.key(0)), cfg)


@pytest.fixture(scope="module", autouse=True)
def trace_listener():
    jax.monitoring.register_event_duration_secs_listener(_listen)
    yield
    jax.monitoring.unregister_event_duration_listener(_listen)


def compile_state():
    """Everything traced or compiled so far: the trace / compile events and the entry points' jit caches."""
    return (len(_events), sampler_impl._prefill_jit._cache_size(), sampler_impl._decode_jit._cache_size(),
            ar_impl._sample_ar_jit._cache_size(), modeling._forward_jit._cache_size(),
            sampler_impl._sample_jit._cache_size())


@contextlib.contextmanager
def fails_before_compiling(*fragments: str):
    """The block raises an InputError whose message holds every fragment, and nothing was traced or compiled."""
    before = compile_state()
    with pytest.raises(InputError) as err:
        yield err
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert compile_state() == before, "the error came after tracing or compiling"
    assert isinstance(err.value, BardError) and isinstance(err.value, ValueError)


def call(entry: str, model, ids, **kw):
    if entry == "generate":
        return bj.generate(model, ids, CFG, **kw)
    if entry == "ar":
        return generate_ar(model, ids, AR, **kw)
    return bj.forward(model, ids, **kw)


def pixels(rows: int) -> np.ndarray:
    return np.zeros((rows, 1536), np.float32)


def image_prompt(n_pads: int, *text: int) -> np.ndarray:
    return np.array([[5, 1002] + [IMG] * n_pads + [1003, *text, 7]])


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("ids,where", [
    ([[1, 2, 1024]], "input_ids[0, 2] = 1024"),
    ([[1, -1, 2], [3, 4, 5]], "input_ids[0, 1] = -1"),
    ([[1, 2, 3], [4, 5, 99999]], "input_ids[1, 2] = 99999"),
])
def test_token_ids_outside_the_vocabulary(model, entry, ids, where):
    with fails_before_compiling(where, "outside the vocabulary [0, 1024)"):
        call(entry, model, np.array(ids))


@pytest.mark.parametrize("entry", ENTRIES)
def test_an_id_outside_the_vocabulary_at_a_padding_position_is_still_an_error(model, entry):
    with fails_before_compiling("input_ids[0, 0] = 5000"):
        call(entry, model, np.array([[5000, 1, 2]]), attention_mask=np.array([[0, 1, 1]]))


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("ids,dtype", [
    (np.array([[1.0, 2.0]], np.float32), "float32"),
    ([[1.0, 2.0]], "float64"),
    (np.array([[True, False]]), "bool"),
    ([["a", "b"]], "<U1"),
])
def test_token_ids_that_are_not_integers(model, entry, ids, dtype):
    with fails_before_compiling("input_ids must hold integer token ids", f"dtype {dtype}"):
        call(entry, model, ids)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("ids", [[1, 2, 3], [[[1, 2, 3]]], 7])
def test_input_ids_that_are_not_2d(model, entry, ids):
    with fails_before_compiling("input_ids must be [batch, length]", f"shape {np.shape(ids)}"):
        call(entry, model, ids)


@pytest.mark.parametrize("entry", ENTRIES)
def test_ragged_input_ids(model, entry):
    with fails_before_compiling("input_ids must be an array"):
        call(entry, model, [[1, 2, 3], [4]])


@pytest.mark.parametrize("entry", ENTRIES)
def test_attention_mask_of_another_shape(model, entry):
    with fails_before_compiling("attention_mask shape (1, 2)", "input_ids shape (1, 3)"):
        call(entry, model, np.array([[1, 2, 3]]), attention_mask=np.ones((1, 2), bool))


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("mask,shown", [
    ([[0, 2, 1]], "got 2 at attention_mask[0, 1]"),
    ([[1.0, 0.5, 1.0]], "got 0.5 at attention_mask[0, 1]"),
    ([[1.0, math.nan, 1.0]], "got nan at attention_mask[0, 1]"),
    ([["1", "1", "1"]], "dtype <U1"),
])
def test_attention_mask_that_is_not_0_1(model, entry, mask, shown):
    with fails_before_compiling("attention_mask must be 0/1 or bool", shown):
        call(entry, model, np.array([[1, 2, 3]]), attention_mask=mask)


@pytest.mark.parametrize("entry", ENTRIES)
def test_empty_prompt(model, entry):
    with fails_before_compiling("input_ids is empty", "shape (1, 0)"):
        call(entry, model, np.zeros((1, 0), np.int32))


@pytest.mark.parametrize("entry", ["generate", "ar"])
def test_a_row_without_a_real_token(model, entry):
    with fails_before_compiling("attention_mask row 1 marks no real token"):
        call(entry, model, np.array([[1, 2, 3], [4, 5, 6]]), attention_mask=np.array([[1, 1, 1], [0, 0, 0]]))


def test_ar_decoder_needs_left_padding(model):
    with fails_before_compiling("attention_mask[0, -1] is 0", "left-padded"):
        generate_ar(model, np.array([[1, 2, 3]]), AR, attention_mask=np.array([[1, 1, 0]]))


GRID = np.array([[1, 4, 4]])  # 16 pixel rows, 4 placeholder tokens
VISION_MISTAKES = {
    "grid without placeholders": (
        dict(ids=[[5, 6, 7]], pixel_values=pixels(16), image_grid_thw=GRID),
        ("image_grid_thw gives 1 image", "no <|image_pad|> placeholder tokens (id 1000)", "need 4")),
    "too few placeholders": (
        dict(ids=image_prompt(3), pixel_values=pixels(16), image_grid_thw=GRID),
        ("image 0 (image_grid_thw[0] = [1, 4, 4]: t*h*w / 2**2) needs 4", "input_ids[0, 2:5] has 3")),
    "too many placeholders": (
        dict(ids=image_prompt(6), pixel_values=pixels(16), image_grid_thw=GRID),
        ("needs 4 <|image_pad|>", "input_ids[0, 2:8] has 6")),
    "two images, one grid": (
        dict(ids=np.concatenate([image_prompt(4), image_prompt(4)], 1), pixel_values=pixels(16), image_grid_thw=GRID),
        ("2 runs of <|image_pad|>", "8 in all", "image_grid_thw gives 1 image, needing 4")),
    "placeholders without an image": (
        dict(ids=image_prompt(4)),
        ("input_ids holds 4 <|image_pad|> placeholder tokens", "pixel_values and image_grid_thw are None")),
    "pixels without a grid": (
        dict(ids=image_prompt(4), pixel_values=pixels(16)), ("pixel_values given without image_grid_thw",)),
    "a grid without pixels": (
        dict(ids=image_prompt(4), image_grid_thw=GRID), ("image_grid_thw given without pixel_values",)),
    "too few pixel rows": (
        dict(ids=image_prompt(4), pixel_values=pixels(12), image_grid_thw=GRID),
        ("image_grid_thw needs 16 pixel rows", "pixel_values has 12")),
    "a grid that is not a merge grid": (
        dict(ids=image_prompt(3), pixel_values=pixels(12), image_grid_thw=[[1, 3, 4]]),
        ("image_grid_thw[0] = [1, 3, 4] is not a patch grid", "spatial merge size 2")),
    "a grid row after the padding": (
        dict(ids=image_prompt(4), pixel_values=pixels(16), image_grid_thw=[[1, 4, 4], [0, 0, 0], [1, 2, 2]]),
        ("image_grid_thw[2] = [1, 2, 2] follows the zero-count padding row image_grid_thw[1] = [0, 0, 0]",)),
    "a negative grid": (
        dict(ids=image_prompt(4), pixel_values=pixels(16), image_grid_thw=[[1, 4, 4], [-1, 2, 2]]),
        ("image_grid_thw[1] = [-1, 2, 2] is not a patch grid",)),
    "a float grid": (
        dict(ids=image_prompt(4), pixel_values=pixels(16), image_grid_thw=GRID.astype(np.float32)),
        ("image_grid_thw must hold integers", "float32")),
    "integer pixels": (
        dict(ids=image_prompt(4), pixel_values=np.zeros((16, 1536), np.uint8), image_grid_thw=GRID),
        ("pixel_values must be floating-point", "uint8")),
    "a placeholder in the padding": (
        dict(ids=np.concatenate([[[IMG]], image_prompt(4)], 1), attention_mask=[[0] + [1] * 8],
             pixel_values=pixels(16), image_grid_thw=GRID),
        ("input_ids[0, 0] is a <|image_pad|> placeholder (id 1000) at a padding position",)),
    "a video slice short of tokens": (
        dict(ids=[[5, VID, VID, VID, VID, 6, VID, VID, VID, 7]], pixel_values_videos=pixels(32),
             video_grid_thw=[[2, 4, 4]]),
        ("video 0 slice 1 of 2 (video_grid_thw[0] = [2, 4, 4]: h*w / 2**2 per temporal slice) needs 4 "
         "<|video_pad|>", "input_ids[0, 6:9] has 3")),
    "one video run for two slices": (
        dict(ids=[[5] + [VID] * 8 + [7]], pixel_values_videos=pixels(32), video_grid_thw=[[2, 4, 4]]),
        ("1 run of <|video_pad|> placeholder tokens (id 1001, 8 in all)", "video_grid_thw gives 2 video slices")),
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", sorted(VISION_MISTAKES))
def test_vision_inputs_that_do_not_match_the_prompt(model, entry, case):
    kw, fragments = VISION_MISTAKES[case]
    kw = dict(kw)
    ids = kw.pop("ids")
    with fails_before_compiling(*fragments):
        call(entry, model, np.asarray(ids), **kw)


def test_inputs_the_checks_accept(model):
    """Left and right padding, several images over a batch, trailing zero-count grid rows and extra pixel rows (both
    padding), video slices one run each, float and int masks."""
    c = model.config
    ids = np.array([[0, 0, 5, 1002, IMG, IMG, IMG, IMG, 1003, 7],
                    [5, 1002, IMG, 1003, 6, 1002, IMG, IMG, 1003, 0]])
    mask = np.array([[0, 0] + [1] * 8, [1] * 9 + [0]])
    grid = np.array([[1, 4, 4], [1, 2, 2], [1, 2, 4], [0, 0, 0]])
    for m in (mask, mask.astype(bool), mask.astype(np.float32)):
        assert check_inputs(c, ids, m, pixels(40), grid, require_prompt=True).dtype == bool
    video = [[5, VID, VID, VID, VID, 6, VID, VID, VID, VID, 7]]
    assert check_inputs(c, video, None, None, None, pixels(40), [[2, 4, 4], [0, 0, 0]]) is None


def per_row(rows: int, *grids) -> tuple[np.ndarray, np.ndarray]:
    """Per-example pixels [B, rows, C] and grids [B, I, 3] (each row's grid list padded with zero rows)."""
    width = max(len(g) for g in grids)
    grid = np.zeros((len(grids), width, 3), np.int64)
    for b, g in enumerate(grids):
        grid[b, : len(g)] = g
    return np.zeros((len(grids), rows, 1536), np.float32), grid


TWO_ROWS = np.concatenate([image_prompt(4), image_prompt(4)], 0)  # one 4-token image in each row
DECODER_VISION_MISTAKES = {
    "per-example pixels for another batch size": (
        dict(ids=TWO_ROWS, vision=per_row(16, [[1, 4, 4]])),
        ("per-example pixel_values (1, 16, 1536) and image_grid_thw (1, 1, 3) must be [B, P, C] and [B, I, 3] with "
         "B = 2",)),
    "a row whose placeholders miss its own grid": (
        dict(ids=TWO_ROWS, vision=per_row(16, [[1, 4, 4]], [[1, 2, 2]])),
        ("batch row 1 (per-example vision)", "needs 1 <|image_pad|>", "has 4")),
    "too few pixel rows in one row": (
        dict(ids=TWO_ROWS, vision=per_row(12, [[1, 4, 4]], [[1, 4, 4]])),
        ("batch row 0 (per-example vision)", "image_grid_thw needs 16 pixel rows", "pixel_values has 12")),
    "images per example, videos concatenated": (
        dict(ids=np.array([[5] + [IMG] * 4 + [6] + [VID] * 4 + [7]]), vision=per_row(16, [[1, 4, 4]]),
             pixel_values_videos=pixels(16), video_grid_thw=[[1, 4, 4]]),
        ("pixel_values and pixel_values_videos must use the same layout",)),
    "a video's slices in two rows": (
        dict(ids=np.array([[5] + [VID] * 4 + [7], [6] + [VID] * 4 + [7]]), pixel_values_videos=pixels(32),
             video_grid_thw=[[2, 4, 4]]),
        ("video 0 (video_grid_thw[0] = [2, 4, 4]) has its 2 temporal slices' placeholder runs in several rows "
         "[0, 1]",)),
}


@pytest.mark.parametrize("entry", ["generate", "ar"])
@pytest.mark.parametrize("case", sorted(DECODER_VISION_MISTAKES))
def test_decoder_vision_layouts_that_do_not_fit(model, entry, case):
    """The decoders take pixels per example too ([B, P, C], [B, I, 3]); mistakes name the row."""
    kw = dict(DECODER_VISION_MISTAKES[case][0])
    ids = kw.pop("ids")
    if "vision" in kw:
        kw["pixel_values"], kw["image_grid_thw"] = kw.pop("vision")
    with fails_before_compiling(*DECODER_VISION_MISTAKES[case][1]):
        call(entry, model, ids, **kw)


@pytest.mark.parametrize("entry,length,fragments", [
    ("generate", 8186, ("prompt length 8186 + 8 new tokens = 8194", "max positions (max_position_embeddings 8192)")),
    ("ar", 8190, ("prompt length 8190 + 4 new tokens = 8194", "max_position_embeddings 8192")),
    ("forward", 8193, ("input length 8193 exceeds the model's max positions",)),
])
def test_prompt_longer_than_the_positions(model, entry, length, fragments):
    with fails_before_compiling(*fragments):
        call(entry, model, np.ones((1, length), np.int32))


def test_new_tokens_are_counted_in_whole_blocks(model):
    cfg = bj.SamplingConfig(max_new_tokens=5, block_size=4, mask_token_id=MASK, eos_token_id=EOS)
    with fails_before_compiling("prompt length 8185 + 8 new tokens (max_new_tokens 5 in whole blocks of 4)"):
        bj.generate(model, np.ones((1, 8185), np.int32), cfg)


SETTINGS_MISTAKES = [
    ("temperature", math.nan, "temperature must be a finite number, got nan"),
    ("temperature", math.inf, "temperature must be a finite number, got inf"),
    ("temperature", -0.5, "temperature must be in [0, inf), got -0.5"),
    ("temperature", "0.7", "temperature must be a number, got '0.7' (str)"),
    ("max_new_tokens", 2.5, "max_new_tokens must be an int, got 2.5 (float)"),
    ("max_new_tokens", True, "max_new_tokens must be an int, got True (bool)"),
    ("max_new_tokens", 0, "max_new_tokens must be >= 1, got 0"),
    ("top_k", 1.0, "top_k must be an int, got 1.0 (float)"),
    ("top_p", math.nan, "top_p must be a finite number, got nan"),
    ("top_p", 0.0, "top_p must be in (0, 1], got 0"),
    ("eos_token_id", None, "eos_token_id must be an int, got None (NoneType)"),
    ("eos_token_id", "<|im_end|>", "eos_token_id must be an int, got '<|im_end|>' (str)"),
    ("eos_token_id", -1, "eos_token_id must be >= 0, got -1"),
]
SAMPLING_ONLY = [
    ("block_size", 4.0, "block_size must be an int, got 4.0 (float)"),
    ("block_size", 0, "block_size must be >= 1, got 0"),
    ("denoising_steps", "4", "denoising_steps must be an int, got '4' (str)"),
    ("confidence_threshold", math.nan, "confidence_threshold must be a finite number, got nan"),
    ("confidence_threshold", "0.9", "confidence_threshold must be a number, got '0.9' (str)"),
    ("confidence_threshold", 1.5, "confidence_threshold must be in (0, 1], got 1.5"),
    ("mask_token_id", None, "mask_token_id must be an int, got None (NoneType)"),
    ("mask_token_id", 1022.0, "mask_token_id must be an int, got 1022.0 (float)"),
    ("strategy", None, "unknown strategy None"),
    ("commit", "later", "unknown commit mode 'later'"),
]


@pytest.mark.parametrize("field,value,message", SETTINGS_MISTAKES + SAMPLING_ONLY)
def test_sampling_config_fields_of_the_wrong_type_or_value(field, value, message):
    kw = {"mask_token_id": MASK, "eos_token_id": EOS, field: value}
    with fails_before_compiling("invalid SamplingConfig", message):
        bj.SamplingConfig(**kw)


@pytest.mark.parametrize("field,value,message", SETTINGS_MISTAKES)
def test_ar_config_fields_of_the_wrong_type_or_value(field, value, message):
    with fails_before_compiling("invalid ARConfig", message):
        ARConfig(**{field: value})


def test_settings_collect_every_problem_and_store_plain_numbers():
    with fails_before_compiling("block_size must be an int", "temperature must be a finite number",
                                "mask_token_id and eos_token_id are both 5"):
        bj.SamplingConfig(block_size=4.0, temperature=math.nan, mask_token_id=5, eos_token_id=5)
    cfg = bj.SamplingConfig(block_size=np.int64(4), temperature=np.float32(0.5), top_p=1, mask_token_id=MASK,
                            eos_token_id=EOS)
    assert type(cfg.block_size) is int and type(cfg.temperature) is float and type(cfg.top_p) is float
    plain = bj.SamplingConfig(block_size=4, temperature=0.5, mask_token_id=MASK, eos_token_id=EOS)
    assert cfg == plain and hash(cfg) == hash(plain)  # one compiled loop for both
    assert bj.SamplingConfig(mask_token_id=0, eos_token_id=EOS).prefill_settings().mask_token_id == 0


@pytest.mark.parametrize("entry,kw,fragments", [
    ("generate", dict(mask_token_id=5000, eos_token_id=EOS), ("mask_token_id 5000 outside the vocabulary [0, 1024)",)),
    ("generate", dict(mask_token_id=MASK, eos_token_id=151645), ("eos_token_id 151645 outside the vocabulary",)),
    ("generate", dict(mask_token_id=MASK, eos_token_id=EOS, top_k=2000), ("top_k 2000 exceeds the vocabulary",)),
    ("ar", dict(eos_token_id=151645), ("eos_token_id 151645 outside the vocabulary [0, 1024)",)),
    ("ar", dict(eos_token_id=EOS, top_k=2000), ("top_k 2000 exceeds the vocabulary size 1024",)),
])
def test_settings_outside_the_models_vocabulary(model, entry, kw, fragments):
    with fails_before_compiling(*fragments):
        if entry == "generate":
            bj.generate(model, np.array([[1, 2]]), bj.SamplingConfig(**kw))
        else:
            generate_ar(model, np.array([[1, 2]]), ARConfig(**kw))


def test_wrong_objects_in_place_of_the_model_settings_and_key(model):
    ids = np.array([[1, 2]])
    with fails_before_compiling("config must be a bard_jax.SamplingConfig, got ARConfig"):
        bj.generate(model, ids, AR)
    with fails_before_compiling("config must be a bard_jax.sampler.ar.ARConfig, got SamplingConfig"):
        generate_ar(model, ids, CFG)
    for entry in ENTRIES:
        with fails_before_compiling("model must be a bard_jax.Model", "got dict"):
            call(entry, model.params, ids)
    for entry in ("generate", "ar"):
        with fails_before_compiling("rng must be None or one PRNG key", "got 0 (int)"):
            call(entry, model, ids, rng=0)
    with fails_before_compiling("block_size must be None or an int >= 1, got 4.0"):
        bj.forward(model, ids, block_size=4.0)


def test_forward_under_the_callers_jit_checks_shapes_and_still_runs(model):
    ids = np.array([[1, 2, 3]], np.int32)
    eager = bj.forward(model, ids)
    traced = jax.jit(lambda m, x: bj.forward(m, x))(model, ids)
    np.testing.assert_allclose(np.asarray(traced), np.asarray(eager), atol=1e-5)
    with pytest.raises(InputError, match="input_ids must hold integer token ids, got dtype float32"):
        jax.jit(lambda m, x: bj.forward(m, x))(model, ids.astype(np.float32))


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    """A directory `python -m bard_jax.generate` loads: the tiny model and the synthetic task's tokenizer."""
    from bard_jax import hf
    from bard_jax.data.synthetic import build_tokenizer

    root = tmp_path_factory.mktemp("cli")
    build_tokenizer(str(root / "tokenizer"))
    return hf.save_converted(jax.device_get(model.params), model.config, None, root / "model",
                             side_files_from=root / "tokenizer")


def generate_cli(argv, capfd, monkeypatch) -> tuple[int, list[str], str]:
    """`python -m bard_jax.generate ARGV`, run in this process as `python -m` runs it (runpy, as __main__: importing
    the module would shadow the function `bj.generate` with it): status, error lines, stderr."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["bard_jax.generate", *argv])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("bard_jax.generate", run_name="__main__")
    err = capfd.readouterr().err
    return exited.value.code, [line for line in err.splitlines() if "error:" in line], err


@pytest.mark.parametrize("flags,fragment", [
    (["--max-new-tokens", "9000"], "exceeds the model's max positions"),  # raised by bj.generate, after loading
    (["--image", "missing.png"], "--image missing.png cannot be read (No such file or directory)"),
    (["--block-size", "0"], "block_size must be >= 1, got 0"),
])
def test_generate_cli_prints_one_error_line(model_dir, tmp_path, capfd, monkeypatch, flags, fragment):
    monkeypatch.chdir(tmp_path)
    status, errors, err = generate_cli(["--model", str(model_dir), "--prompt", "how many shapes ?", *flags], capfd,
                                       monkeypatch)
    assert status == 1 and len(errors) == 1, err[-3000:]
    assert errors[0].startswith("python -m bard_jax.generate: error: ") and fragment in errors[0], errors


def test_generate_cli_names_a_training_workdir_or_a_directory_without_a_tokenizer(model_dir, tmp_path, capfd,
                                                                                  monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"  # what `python -m bard_jax.train --workdir run` leaves: checkpoints/, export/, ...
    shutil.copytree(model_dir, run / "export")
    (run / "checkpoints").mkdir()
    bare = tmp_path / "bare"  # weights without the tokenizer files
    shutil.copytree(model_dir, bare)
    for name in os.listdir(bare):
        if name.startswith(("tokenizer", "special_tokens", "chat_template")):
            os.remove(bare / name)
    status, errors, err = generate_cli(["--model", str(bare), "--prompt", "x"], capfd, monkeypatch)
    assert status == 1 and len(errors) == 1 and f"{bare}: no tokenizer files" in errors[0], err[-3000:]
    # The real command, once: the process prints the one line and no traceback.
    r = subprocess.run([sys.executable, "-m", "bard_jax.generate", "--model", str(run), "--prompt", "x"],
                       capture_output=True, text=True, cwd=tmp_path)
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert errors == [f"python -m bard_jax.generate: error: {run} is a training workdir, not a weights directory: "
                      f"pass {run / 'export'} (written when training finishes)"], errors
