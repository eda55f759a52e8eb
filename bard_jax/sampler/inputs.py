"""What both decoders do with their arguments before anything is traced: check them, and bring them into the form
the compiled functions take (int32 ids, a bool mask, per-example vision, a key).

Letters: B batch, T prompt columns, P pixel rows, C patch values, I grid rows.

Pixels come in either layout of `bard_jax.model.example_vision`: concatenated over the batch ([P, C] with [I, 3]
grids, as transformers' processor returns them) or per example ([B, P, C] with [B, I, 3]). The decoders always
encode vision per example; a concatenated layout is regrouped on the host, which needs its values: under the
caller's `jax.jit` (traced arguments) a batch of more than one row must arrive per example.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bard_jax.errors import InputError
from bard_jax.model.example_vision import ExampleVision, split_by_example
from bard_jax.model.inputs import check_inputs, check_length
from bard_jax.modeling import Model, check_model

VISION_ARGS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
# Bit flags of `SampleResult.bad_input`: what the host cannot check when the arguments are traced values.
BAD_TOKEN_ID = 1  # a real prompt position holds an id outside [0, vocab)
BAD_PLACEHOLDERS = 2  # a row's image (or video) pad tokens are not as many as its grids' merged windows


class DecodeInputs(NamedTuple):
    """The arguments of a decoder's compiled function."""

    input_ids: jax.Array  # [B, T] int32
    attention_mask: jax.Array  # [B, T] bool
    vision: ExampleVision  # per-example pixels and grids (fields None when absent)
    key: jax.Array


def check_rng(rng: Any) -> None:
    """None or a PRNG key: a typed key (`jax.random.key(seed)`) or a raw uint32[2] one (`jax.random.PRNGKey`)."""
    if rng is None:
        return
    if isinstance(rng, jax.Array) and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) and rng.shape == ():
        return
    if isinstance(rng, (jax.Array, np.ndarray)):
        if rng.dtype == np.uint32 and rng.shape == (2,):
            return
        shown = f"an array of dtype {rng.dtype} and shape {rng.shape}"
    else:
        shown = f"{rng!r} ({type(rng).__name__})"
    raise InputError(f"rng must be None or one PRNG key such as jax.random.key(0), got {shown}")


def check_settings(config: Any, expected: type, shown: str, entry: str) -> None:
    """The settings object: the right class (`shown`: how to name it), and hashable (it is a static argument of
    the compiled function)."""
    if not isinstance(config, expected):
        raise InputError(f"config must be a {shown}, got {type(config).__name__}")
    try:
        hash(config)
    except TypeError as e:
        raise InputError(f"{entry} needs a hashable config (it is compiled in as a static argument), got an "
                         f"unhashable {type(config).__name__}: {e}") from e


def check_arrays(entry: str, **arrays: Any) -> None:
    """The pure entry points take arrays, not Python lists or scalars: a list inside the caller's jit would be
    compiled in as a constant, and its shape is what selects the compiled program."""
    for name, value in arrays.items():
        if value is not None and not isinstance(value, (jax.Array, np.ndarray)):
            raise InputError(f"{name} must be a numpy or jax array, got {type(value).__name__} ({entry} runs inside "
                             f"jax.jit; wrap Python values with np.asarray, or call the convenience wrapper, which "
                             f"converts them)")


def _per_example(value: Any) -> bool | None:
    """True for the per-example layout (3-D pixels), False for concatenated (2-D), None when absent."""
    if value is None:
        return None
    return len(np.shape(value)) == 3


def check_decoding_call(model: Model, input_ids: Any, attention_mask: Any, pixel_values: Any, image_grid_thw: Any,
                        pixel_values_videos: Any, video_grid_thw: Any, rng: Any, *, token_ids: dict[str, int],
                        top_k: int, new_tokens: int, detail: str = "") -> np.ndarray | None:
    """The host-side checks a decoder runs before compiling anything: the model, the settings' token ids
    (`token_ids`: name -> id) and top_k against its vocabulary, the inputs (`check_inputs`, row by row for the
    per-example layout; every row needs a real token), prompt length + `new_tokens` against its positions, the key.
    Returns the mask as host bools (or None)."""
    check_model(model)
    c = model.config
    for name, value in token_ids.items():
        if not 0 <= value < c.text.vocab_size:
            raise InputError(f"{name} {value} outside the vocabulary [0, {c.text.vocab_size})")
    if top_k > c.text.vocab_size:
        raise InputError(f"top_k {top_k} exceeds the vocabulary size {c.text.vocab_size}")
    layouts = {_per_example(v) for v in (pixel_values, pixel_values_videos)} - {None}
    if layouts == {True, False}:
        raise InputError("pixel_values and pixel_values_videos must use the same layout: both concatenated over the "
                         "batch ([P, C]) or both per example ([B, P, C])")
    real = check_inputs(c, input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos,
                        video_grid_thw, require_prompt=True, per_example=layouts == {True})
    check_length(c, np.shape(input_ids)[1], new_tokens, detail)
    check_rng(rng)
    return real


def prepare(model: Model, input_ids: Any, attention_mask: Any, pixel_values: Any, image_grid_thw: Any,
            pixel_values_videos: Any, video_grid_thw: Any, rng: Any) -> DecodeInputs:
    """Checked arguments -> the compiled function's: ids int32, mask bool, vision per example, a key (0 if None).
    The host-side regrouping (which can still refuse a video whose slices lie in several rows) runs first, before
    any jax operation."""
    vision = _example_vision(model, input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos,
                             video_grid_thw)
    ids = jnp.asarray(input_ids, jnp.int32)
    mask = jnp.ones(ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
    key = rng if rng is not None else jax.random.key(0)
    return DecodeInputs(ids, mask, vision, key)


def _example_vision(model: Model, input_ids: Any, attention_mask: Any, pixel_values: Any, image_grid_thw: Any,
                    pixel_values_videos: Any, video_grid_thw: Any) -> ExampleVision:
    if pixel_values is None and pixel_values_videos is None:
        return ExampleVision(None, None, None, None)
    as_int = (lambda g: None if g is None else jnp.asarray(g, jnp.int32))
    as_array = (lambda a: None if a is None else jnp.asarray(a))
    if _per_example(pixel_values) or _per_example(pixel_values_videos):
        return ExampleVision(as_array(pixel_values), as_int(image_grid_thw), as_array(pixel_values_videos),
                             as_int(video_grid_thw))
    given = (input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)
    if any(isinstance(a, jax.core.Tracer) for a in given):
        batch = np.shape(input_ids)[0]
        if batch != 1:
            raise InputError(f"under jax.jit the decoders need per-example vision for a batch of {batch} rows "
                             f"(pixel_values [B, P, C] with image_grid_thw [B, I, 3]; "
                             f"bard_jax.model.example_vision.split_by_example builds them outside jit): regrouping "
                             f"the concatenated layout reads the grids' values")
        one_row = (lambda a: None if a is None else jnp.reshape(a, (1,) + jnp.shape(a)[-2:]))
        return ExampleVision(one_row(as_array(pixel_values)), one_row(as_int(image_grid_thw)),
                             one_row(as_array(pixel_values_videos)), one_row(as_int(video_grid_thw)))
    host = split_by_example(model.config, np.asarray(input_ids), None if attention_mask is None else
                            np.asarray(attention_mask), pixel_values, image_grid_thw, pixel_values_videos,
                            video_grid_thw)
    return ExampleVision(*(as_array(a) for a in host))


def input_problems(config: Any, inputs: DecodeInputs) -> jax.Array:
    """[B] int32 bit flags (BAD_TOKEN_ID | BAD_PLACEHOLDERS) of each row's inputs, computed on the device.

    Outside a trace `check_decoding_call` refuses such inputs before anything compiles; inside a caller's jit their
    values are unknown on the host, so the decoders compute these flags, do not decode a flagged row (it keeps the
    mask id / EOS, 0 generated tokens) and return the flags in `SampleResult.bad_input`."""
    ids, mask = inputs.input_ids, inputs.attention_mask
    bad_ids = jnp.any(mask & ((ids < 0) | (ids >= config.text.vocab_size)), axis=-1)
    merge = config.vision.spatial_merge_size ** 2

    def miscounted(token_id: int, grid_bi3: Any) -> jax.Array:
        have = jnp.sum(mask & (ids == token_id), axis=-1)
        want = 0 if grid_bi3 is None else jnp.sum(jnp.prod(grid_bi3, axis=-1), axis=-1) // merge
        return have != want

    v = inputs.vision
    bad_vision = miscounted(config.image_token_id, v.image_grid) | miscounted(config.video_token_id, v.video_grid)
    return bad_ids.astype(jnp.int32) * BAD_TOKEN_ID + bad_vision.astype(jnp.int32) * BAD_PLACEHOLDERS
