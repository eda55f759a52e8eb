"""The pure decoders inside the caller's own `jax.jit` (parameters traced): `bj.sample` equals `bj.generate` and the
Python reference, traces once per shape; `sample_ar` equals `generate_ar`; bad arguments fail before compiling;
per-example vision equals the concatenated layout."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers_sampler import EOS, MASK, image_prompt, reference_generate, sharp_model

import bard_jax as bj
from bard_jax.errors import InputError
from bard_jax.sampler import ar as ar_impl
from bard_jax.sampler import diffusion as sampler_impl
from bard_jax.sampler.ar import ARConfig, generate_ar, sample_ar

SAMPLED = dict(temperature=0.8, top_k=20, top_p=0.9)
STATS = ("nfe", "block_step_counts", "generated_tokens", "tokens_per_forward", "tokens_processed")
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def model_() -> bj.Model:
    """One model for the whole file (initialising one takes seconds): peaked enough for clear greedy choices, not
    so peaked that sampling has nothing to choose."""
    return sharp_model(False, sharpness=25)


def left_pad(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(map(len, prompts))
    ids = np.zeros((len(prompts), width), np.int32)
    mask = np.zeros((len(prompts), width), bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, True
    return ids, mask


def per_example(rows: list[dict], patch_dim: int, pixel_rows: int, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-example pixel_values [B, pixel_rows, C] and image_grid_thw [B, slots, 3] from each row's concatenated
    vision arguments ({} for a row without images): its images in order, then zero rows."""
    pixels = np.zeros((len(rows), pixel_rows, patch_dim), np.float32)
    grid = np.zeros((len(rows), slots, 3), np.int32)
    for b, row in enumerate(rows):
        if row:
            pixels[b, :len(row["pixel_values"])] = row["pixel_values"]
            grid[b, :len(row["image_grid_thw"])] = row["image_grid_thw"]
    return pixels, grid


def library_compiles() -> tuple[int, ...]:
    return (sampler_impl._sample_jit._cache_size(), sampler_impl._prefill_jit._cache_size(),
            sampler_impl._decode_jit._cache_size(), ar_impl._sample_ar_jit._cache_size())


@contextlib.contextmanager
def fails_before_compiling(*fragments: str):
    """The block raises an InputError whose message holds every fragment; nothing was compiled meanwhile (no XLA
    compile event, the decoders' jit caches unchanged)."""
    events = []

    def listen(event: str, duration: float, **kw) -> None:
        if event == COMPILE_EVENT:
            events.append(event)

    before = library_compiles()
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        with pytest.raises(InputError) as err:
            yield err
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    for fragment in fragments:
        assert fragment in str(err.value), f"{fragment!r} not in {str(err.value)!r}"
    assert not events and library_compiles() == before, "the error came after compiling"


def assert_matches_reference(result, row: int, ref) -> None:
    np.testing.assert_array_equal(np.asarray(result.tokens[row]), ref.tokens, err_msg=f"row {row}")
    np.testing.assert_array_equal(np.asarray(result.block_step_counts[row]), ref.counts, err_msg=f"row {row}")
    assert int(result.nfe[row]) == ref.nfe and int(result.generated_tokens[row]) == ref.generated_tokens
    assert int(result.tokens_processed[row]) == ref.tokens_processed
    np.testing.assert_allclose(float(result.tokens_per_forward[row]), ref.tokens_per_forward, rtol=1e-6)


def assert_equals_generate(result: bj.SampleResult, out) -> None:
    """Token for token and every statistic, exactly."""
    assert isinstance(result, bj.SampleResult)
    np.testing.assert_array_equal(np.asarray(result.tokens), np.asarray(out.tokens))
    for name in STATS:
        np.testing.assert_array_equal(np.asarray(getattr(result, name)), out.stats[name], err_msg=name)


SAMPLED_SC = bj.SamplingConfig(max_new_tokens=8, block_size=4, denoising_steps=3, strategy="low_confidence_dynamic",
                               confidence_threshold=0.5, mask_token_id=MASK, eos_token_id=EOS, **SAMPLED)
TRACES: list[tuple[int, ...]] = []  # the prompt shape of every trace of `user_sample`


@jax.jit
def user_sample(params, ids, mask, key):
    """A caller's own jitted function: the model rebuilt from traced parameters, the settings a closure constant.
    Module level, so that the trace test counts the traces of the program the other test compiled."""
    TRACES.append(ids.shape)
    return bj.sample(bj.Model(params, model_().config), ids, config=SAMPLED_SC, attention_mask=mask, rng=key)


def test_sample_in_user_jit_sampled_equals_generate_and_reference():
    model = model_()
    prompt = list(np.random.default_rng(11).integers(0, 900, 6))
    ids, mask = left_pad([prompt])
    key = jax.random.key(123)
    result = user_sample(model.params, jnp.asarray(ids), jnp.asarray(mask), key)
    assert_equals_generate(result, bj.generate(model, ids, SAMPLED_SC, attention_mask=mask, rng=key))
    ref = reference_generate(model, prompt, SAMPLED_SC, rng=key)
    assert ref.draws["off_argmax"] > 0 and ref.draws["top_p_cut"] > 0, ref.draws  # sampling did choose
    assert_matches_reference(result, 0, ref)
    # Another key, other tokens: the key is a traced argument, not a constant.
    other = user_sample(model.params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(7))
    assert (np.asarray(other.tokens) != np.asarray(result.tokens)).any()


def test_user_jit_traces_once_per_shape():
    """Two prompts of one shape: one trace (whichever test called first); another length: a trace of its own."""
    model = model_()
    rng = np.random.default_rng(0)
    a, b = jnp.asarray(rng.integers(0, 900, (2, 1, 6)), jnp.int32)
    mask, key = jnp.ones((1, 6), bool), jax.random.key(0)
    out_a, out_b = user_sample(model.params, a, mask, key), user_sample(model.params, b, mask, key)
    assert TRACES.count((1, 6)) == 1
    assert (np.asarray(out_a.tokens) != np.asarray(out_b.tokens)).any()  # the prompt is data, not a constant
    # Another prompt length is traced anew (lowered only: compiling it would prove nothing more and take seconds).
    user_sample.lower(model.params, jnp.zeros((1, 9), jnp.int32), jnp.ones((1, 9), bool), key)
    assert TRACES.count((1, 9)) == 1 and len(TRACES) == len(set(TRACES))


def image_batch(config):
    """Two left-padded rows with images in both (two in the first): prompts, each row's vision arguments, ids, mask,
    the processor's concatenated layout and the per-example one. The tests below share its shapes (and so what
    they compile)."""
    rng = np.random.default_rng(2)
    prompt0, vision0 = image_prompt(config, rng, images=2)
    prompt1, vision1 = image_prompt(config, rng)
    prompt1 = [9, 8] + prompt1
    ids, mask = left_pad([prompt0, prompt1])
    concatenated = {k: np.concatenate([vision0[k], vision1[k]]) for k in vision0}
    pixels, grid = per_example([vision0, vision1], config.vision.patch_dim, 32, 2)
    return [prompt0, prompt1], [vision0, vision1], ids, mask, concatenated, dict(pixel_values=pixels,
                                                                                image_grid_thw=grid)


IMAGE_SC = bj.SamplingConfig(max_new_tokens=8, block_size=4, denoising_steps=2, strategy="low_confidence_dynamic",
                             confidence_threshold=0.6, mask_token_id=MASK, eos_token_id=EOS)


def image_sampler(model: bj.Model, mask, example):
    """A caller's jitted `bj.sample` of the `image_batch` rows (parameters traced, per-example images) as a function
    of the ids."""
    cfg = model.config
    user = jax.jit(lambda params, ids, mask, pixels, grid: bj.sample(
        bj.Model(params, cfg), ids, config=IMAGE_SC, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid))
    return lambda ids: user(model.params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(example["pixel_values"]),
                            jnp.asarray(example["image_grid_thw"]))


def test_sample_in_user_jit_per_example_images_equals_generate_and_reference():
    model = model_()
    prompts, visions, ids, mask, concatenated, example = image_batch(model.config)
    result = image_sampler(model, mask, example)(ids)
    # generate takes the processor's concatenated layout and regroups it on the host
    assert_equals_generate(result, bj.generate(model, ids, IMAGE_SC, attention_mask=mask, **concatenated))
    for row, (prompt, vision) in enumerate(zip(prompts, visions)):
        assert_matches_reference(result, row, reference_generate(model, prompt, IMAGE_SC, **vision))


def test_per_example_layout_equals_concatenated_layout():
    """The per-example layout given directly decodes as the processor's concatenated layout does, and each row as
    the reference decodes it alone."""
    model = model_()
    prompts, visions, ids, mask, concatenated, example = image_batch(model.config)
    out_cat = bj.generate(model, ids, IMAGE_SC, attention_mask=mask, **concatenated)
    out_ex = bj.generate(model, ids, IMAGE_SC, attention_mask=mask, **example)
    np.testing.assert_array_equal(np.asarray(out_ex.tokens), np.asarray(out_cat.tokens))
    for name in STATS:
        np.testing.assert_array_equal(out_ex.stats[name], out_cat.stats[name], err_msg=name)
    result = bj.SampleResult(tokens=out_ex.tokens, bad_input=np.zeros(len(ids), np.int32),
                             **{name: out_ex.stats[name] for name in STATS})
    for row, (prompt, vision) in enumerate(zip(prompts, visions)):
        assert_matches_reference(result, row, reference_generate(model, prompt, IMAGE_SC, **vision))
    # the rows in the other order, their images with them: the same rows, swapped
    swapped = {k: np.ascontiguousarray(v[::-1]) for k, v in example.items()}
    out_sw = bj.generate(model, ids[::-1].copy(), IMAGE_SC, attention_mask=mask[::-1].copy(), **swapped)
    np.testing.assert_array_equal(np.asarray(out_sw.tokens)[::-1], np.asarray(out_ex.tokens))


def test_sample_ar_in_user_jit_equals_generate_ar():
    model = model_()
    cfg = model.config
    ac = ARConfig(max_new_tokens=6, eos_token_id=EOS, **SAMPLED)
    rng = np.random.default_rng(3)
    ids, mask = left_pad([list(rng.integers(0, 900, 6)), list(rng.integers(0, 900, 3))])
    key = jax.random.key(9)
    user = jax.jit(lambda params, ids, mask, key: sample_ar(bj.Model(params, cfg), ids, config=ac,
                                                            attention_mask=mask, rng=key))
    result = user(model.params, jnp.asarray(ids), jnp.asarray(mask), key)
    out = generate_ar(model, ids, ac, attention_mask=mask, rng=key)
    np.testing.assert_array_equal(np.asarray(result.tokens), out.tokens)
    np.testing.assert_array_equal(np.asarray(result.generated_tokens), out.stats["generated_tokens"])
    assert int(np.asarray(result.nfe).max()) == out.stats["nfe"]
    other = user(model.params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(10))
    assert (np.asarray(other.tokens) != out.tokens).any()  # the decode did sample, with the key it was given


class Unhashable(bj.SamplingConfig):
    __hash__ = None


SC = bj.SamplingConfig(max_new_tokens=4, block_size=4, denoising_steps=2, mask_token_id=MASK, eos_token_id=EOS)
IDS = np.array([[1, 2, 3]], np.int32)


@pytest.mark.parametrize("entry", ["sample", "sample_ar"])
@pytest.mark.parametrize("ids,mask,fragments", [
    ([[1, 2, 3]], None, ("input_ids must be a numpy or jax array", "got list")),
    (IDS, [[1, 1, 1]], ("attention_mask must be a numpy or jax array", "got list")),
    (np.int32(5), None, ("input_ids must be a numpy or jax array", "got int32")),
])
def test_python_values_fail_before_compiling(entry, ids, mask, fragments):
    model = model_()
    with fails_before_compiling(*fragments):
        if entry == "sample":
            bj.sample(model, ids, config=SC, attention_mask=mask)
        else:
            sample_ar(model, ids, config=ARConfig(max_new_tokens=2, eos_token_id=EOS), attention_mask=mask)


@pytest.mark.parametrize("config,fragments", [
    (Unhashable(max_new_tokens=4, block_size=4, denoising_steps=2, mask_token_id=MASK, eos_token_id=EOS),
     ("bj.sample needs a hashable config", "Unhashable")),
    ({"max_new_tokens": 4}, ("config must be a bard_jax.SamplingConfig", "got dict")),
    (ARConfig(max_new_tokens=4, eos_token_id=EOS), ("config must be a bard_jax.SamplingConfig", "got ARConfig")),
])
def test_bad_configs_fail_before_compiling(config, fragments):
    with fails_before_compiling(*fragments):
        bj.sample(model_(), IDS, config=config)


def test_concatenated_pixels_for_a_batch_under_user_jit_fail_before_compiling():
    model = model_()
    cfg = model.config
    _, _, ids, mask, concatenated, _ = image_batch(cfg)  # the processor's layout: [48, C] pixels, [3, 3] grids
    user = jax.jit(lambda params, ids, mask, pixels, grid: bj.sample(
        bj.Model(params, cfg), ids, config=SC, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid))
    args = (model.params, *map(jnp.asarray, (ids, mask, concatenated["pixel_values"],
                                             concatenated["image_grid_thw"])))  # (jnp.asarray compiles a copy)
    with fails_before_compiling("per-example vision for a batch of 2 rows", "pixel_values [B, P, C]"):
        user(*args)


def test_under_user_jit_bad_ids_and_missing_placeholders_are_flagged_and_not_decoded():
    """What the host cannot check on traced values: a row with an id outside the vocabulary, or whose image pad
    tokens do not match its grid, is flagged in `bad_input` and left undecoded; the other rows decode as alone."""
    from bard_jax.sampler.inputs import BAD_PLACEHOLDERS, BAD_TOKEN_ID

    model = model_()
    cfg = model.config
    prompts, visions, ids, mask, concatenated, example = image_batch(cfg)
    decode = image_sampler(model, mask, example)
    good = decode(ids)
    np.testing.assert_array_equal(np.asarray(good.bad_input), [0, 0])
    bad_ids = ids.copy()
    bad_ids[0, -1] = cfg.text.vocab_size + 5  # row 0: an id past the vocabulary
    missing = bad_ids.copy()
    missing[1][missing[1] == cfg.image_token_id] = 7  # row 1: its image's placeholders gone
    out = decode(missing)
    np.testing.assert_array_equal(np.asarray(out.bad_input), [BAD_TOKEN_ID, BAD_PLACEHOLDERS])
    assert (np.asarray(out.tokens) == MASK).all() and (np.asarray(out.generated_tokens) == 0).all()
    # One flagged row leaves its neighbour as it was.
    half = decode(bad_ids)
    np.testing.assert_array_equal(np.asarray(half.bad_input), [BAD_TOKEN_ID, 0])
    np.testing.assert_array_equal(np.asarray(half.tokens[1]), np.asarray(good.tokens[1]))
    # The AR decoder flags the same and emits EOS at once.
    ar_user = jax.jit(lambda params, ids, mask, pixels, grid: sample_ar(
        bj.Model(params, cfg), ids, config=ARConfig(max_new_tokens=4, eos_token_id=EOS), attention_mask=mask,
        pixel_values=pixels, image_grid_thw=grid))
    ar = ar_user(model.params, jnp.asarray(missing), jnp.asarray(mask), jnp.asarray(example["pixel_values"]),
                 jnp.asarray(example["image_grid_thw"]))
    np.testing.assert_array_equal(np.asarray(ar.bad_input), [BAD_TOKEN_ID, BAD_PLACEHOLDERS])
    assert (np.asarray(ar.tokens) == EOS).all()
