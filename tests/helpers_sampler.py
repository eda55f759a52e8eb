"""A plain Python reference of the block-diffusion sampler (spec section 6) and the tiny models it runs on.

    model = sharp_model(tied=False)
    prompt, vision = image_prompt(model.config, np.random.default_rng(0))
    ref = reference_generate(model, prompt, cfg, **vision, rng=key)  # ref.tokens, ref.counts, ref.nfe, ...

`reference_generate` decodes one prompt (a Python list, no padding) with one full forward of the whole sequence per
denoising step (no KV cache, no sampler code; each image or video through the vision tower on its own): token
choice, filters and confidences in float64 numpy, the transfer rule in plain Python. Only the Gumbel noise of a
sampled step is drawn with jax (`jax.random.gumbel` with the key schedule of the spec, so that sampled tokens can be
compared one for one).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import bard_jax as bj
from bard_jax.model.attention import PLAIN, TokenInfo
from bard_jax.model.inputs import vision_inputs, window_index
from bard_jax.model.positions import rope_position_ids
from bard_jax.model.vlm import Qwen3VL
from bard_jax.modeling import network

MASK, EOS = 1023, 1022


@functools.cache
def _sharp_params(tied: bool, seed: int, sharpness: float):
    cfg = bj.preset("tiny").replace(tie_word_embeddings=tied)
    params = bj.init_params(cfg, jax.random.key(seed))
    if tied:  # sharpen through the final norm: the head is the embedding table
        params["language_model"]["norm"]["scale"] = params["language_model"]["norm"]["scale"] * sharpness
        # A tied head scores each input's own embedding highest: at a mask position it predicts the mask id, and
        # every block would stay all mask ids. A small mask embedding leaves the other tokens to choose from.
        table = params["language_model"]["embed_tokens"]["embedding"]
        params["language_model"]["embed_tokens"]["embedding"] = table.at[MASK].multiply(0.05)
    else:
        params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * sharpness
    return cfg, params


def sharp_model(tied: bool, seed: int = 0, sharpness: float | None = None) -> bj.Model:
    """A random tiny model with peaked predictions (a random model is otherwise near-uniform). `sharpness` scales
    the final norm (tied) or the head (untied); the default (25 / 60) makes greedy choices clear, a lower one
    leaves sampling something to choose. Tied: the embedding of MASK is scaled down (see `_sharp_params`). Built
    once per process (initialising takes seconds); every call returns its own params dict over the same arrays."""
    cfg, params = _sharp_params(tied, seed, float(sharpness or (25 if tied else 60)))
    return bj.Model(jax.tree_util.tree_map(lambda a: a, params), cfg)


PAD_TOKENS, PAD_WINDOWS = 32, 8  # the reference's forward pads to multiples of these: few shapes, few compiles


def full_forward_logits(model, seq, prompt_len, b, grid=None, pixels=None, video_grid=None, video_pixels=None):
    """Logits [len(seq), V] (float64) of `seq` = [prompt | response blocks] recomputed from scratch (no cache):
    prompt chunks i // b, response block j -> ceil(P / b) + j, every block sees all earlier blocks and itself.
    Images (`pixels` [P, C], `grid` [I, 3]) and videos (`video_pixels`, `video_grid`) in the concatenated layout.

    To share one compiled forward between prompts, the sequence runs padded with mask ids to a multiple of
    PAD_TOKENS (more blocks after the last: nothing before them attends to them), and the vision rows padded with
    zero rows to a multiple of PAD_WINDOWS (no token takes them; a prompt without vision gets only zero rows, which
    add nothing)."""
    c = model.config
    n = len(seq)
    width = -(-n // PAD_TOKENS) * PAD_TOKENS
    ids = np.concatenate([np.asarray(seq), np.full(width - n, MASK)])[None]
    blk = np.concatenate([np.arange(prompt_len) // b,
                          math.ceil(prompt_len / b) + np.arange(width - prompt_len) // b])
    info = TokenInfo(block=jnp.asarray(blk[None], jnp.int32), kind=jnp.full((1, width), PLAIN, jnp.int32),
                     valid=jnp.ones((1, width), bool))
    pos, _ = rope_position_ids(ids, None, grid, video_grid, image_token_id=c.image_token_id,
                               video_token_id=c.video_token_id, spatial_merge_size=c.vision.spatial_merge_size,
                               xp=np)
    merged, deep, image_windows = encode_items(model, pixels, grid, video_pixels, video_grid)
    windows = window_index(c, jnp.asarray(ids), image_windows)
    logits = _plain_forward(model, jnp.asarray(ids, jnp.int32), jnp.asarray(pos), info, (merged, deep), windows)
    return np.asarray(logits, np.float64)[:n]


def encode_items(model, pixels=None, grid=None, video_pixels=None, video_grid=None):
    """The vision tower's outputs for the images then the videos, each item encoded alone (an item's patches
    attend only within it): merged windows [M, D], deepstack [J, M, D], and how many windows the images take."""
    c = model.config
    merged, deep, image_windows = [], [], 0
    for kind, px, g in (("image", pixels, grid), ("video", video_pixels, video_grid)):
        if px is None:
            continue
        start = 0
        for t, h, w in np.asarray(g).reshape(-1, 3).tolist():
            one = (jnp.asarray(px[start:start + t * h * w]), jnp.asarray([[t, h, w]], jnp.int32))
            m, d = _plain_vision(model, *(one if kind == "image" else (None, None) + one))
            merged.append(m)
            deep.append(d)
            start += t * h * w
        if kind == "image":
            image_windows = sum(m.shape[0] for m in merged)
    rows = sum(m.shape[0] for m in merged)
    pad = -(-max(rows, 1) // PAD_WINDOWS) * PAD_WINDOWS - rows
    width, dtype = c.vision.out_hidden_size, model.dtype
    merged.append(jnp.zeros((pad, width), dtype))
    deep.append(jnp.zeros((len(c.vision.deepstack_visual_indexes), pad, width), dtype))
    return jnp.concatenate(merged), jnp.concatenate(deep, axis=1), image_windows


@jax.jit
def _plain_vision(model, pixels, grid, video_pixels=None, video_grid=None):
    """One image or video through the vision tower (jitted only to keep the test fast)."""
    c = model.config
    vis = vision_inputs(c, pixels, grid, video_pixels, video_grid)
    return network(c).apply({"params": model.params}, vis.pixels_pc, vis.meta, method=Qwen3VL.encode_vision)


@jax.jit
def _plain_forward(model, ids, pos, info, vision, windows):
    """One ordinary forward of the text model with the vision rows put in (jitted only to keep the test fast; no
    cache, no sampler code)."""
    net, p = network(model.config), {"params": model.params}
    x, deep = net.apply(p, ids, vision, windows, method=Qwen3VL.embed)
    h, _ = net.apply(p, x, pos, info, deep, method=Qwen3VL.decode)
    return net.apply(p, h[0], method=Qwen3VL.logits)


def image_prompt(config, rng, images: int = 1) -> tuple[list[int], dict[str, np.ndarray]]:
    """A prompt with `images` 4x4-patch images (4 pad tokens each, between vision start / end) and its vision
    arguments in the concatenated layout: pixel_values [16 * images, C] (random), image_grid_thw [images, 3]."""
    c = config
    prompt = [5, 6]
    for _ in range(images):
        prompt += [c.vision_start_token_id] + [c.image_token_id] * 4 + [c.vision_end_token_id, 7]
    pixels = rng.standard_normal((16 * images, c.vision.patch_dim)).astype(np.float32)
    return prompt, dict(pixel_values=pixels, image_grid_thw=np.array([[1, 4, 4]] * images))


def video_prompt(config, rng) -> tuple[list[int], dict[str, np.ndarray]]:
    """A prompt with one video of grid [2, 4, 4]: two temporal slices of 4 video pad tokens, each preceded by a
    timestamp token and vision start and followed by vision end (Qwen3-VL's layout), and its vision arguments:
    pixel_values_videos [32, C] (random), video_grid_thw [[2, 4, 4]]."""
    c = config
    prompt = [5, 6]
    for stamp in (30, 31):
        prompt += [stamp, c.vision_start_token_id] + [c.video_token_id] * 4 + [c.vision_end_token_id]
    prompt.append(7)
    pixels = rng.standard_normal((32, c.vision.patch_dim)).astype(np.float32)
    return prompt, dict(pixel_values_videos=pixels, video_grid_thw=np.array([[2, 4, 4]]))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_filter(z: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """Top-k then top-p on tempered logits [T, V] (float64): below the k-th largest value -> -inf (ties kept); then,
    in descending order (stable), drop every entry whose preceding softmax mass already exceeds p."""
    z = np.array(z, np.float64)
    if top_k > 0:
        kth = np.sort(z, axis=-1)[:, -top_k]
        z[z < kth[:, None]] = -np.inf
    if top_p < 1.0:
        for row in z:
            order = np.argsort(-row, kind="stable")
            mass = _softmax(row[order])
            before = np.concatenate([[0.0], np.cumsum(mass)[:-1]])
            row[order[before > top_p]] = -np.inf
    return z


def reference_choice(logits: np.ndarray, cfg, key) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Tokens [T], confidences [T] of one step from logits [T, V], and what the draw did (for the test to check it
    exercised sampling): `off_argmax` drawn tokens that are not the most likely one, `top_p_cut` positions where
    top-p removed candidates that top-k kept, `several_kept` positions with more than one candidate left."""
    z = np.asarray(logits, np.float64)
    rows = np.arange(len(z))
    if cfg.temperature == 0.0:
        tok = z.argmax(-1)
        return tok, _softmax(z)[rows, tok], {}
    z = z / cfg.temperature
    after_k = reference_filter(z, cfg.top_k, 1.0)
    z = reference_filter(z, cfg.top_k, cfg.top_p)
    noise = np.asarray(jax.random.gumbel(key, (1,) + z.shape, jnp.float32), np.float64)[0]
    tok = (z + noise).argmax(-1)
    kept = np.isfinite(z).sum(-1)
    info = {"off_argmax": int((tok != z.argmax(-1)).sum()),
            "top_p_cut": int((kept < np.isfinite(after_k).sum(-1)).sum()), "several_kept": int((kept > 1).sum())}
    return tok, _softmax(z)[rows, tok], info


class Reference(NamedTuple):
    tokens: np.ndarray  # [N*b]: unreached blocks hold the mask id
    counts: np.ndarray  # [N] denoising forwards per block
    nfe: int  # forwards: "forward": prefill + denoising + one commit per block without EOS; "reuse": no commits;
    # "fold": denoising forwards only (the prefill and the commits ride on them)
    tokens_processed: int  # prompt + b per denoising forward + b per committed block
    generated_tokens: int  # up to and including the first EOS
    tokens_per_forward: float
    draws: dict  # summed `reference_choice` info over every step


def reference_transfer(x, tok, conf, quota: int, cfg):
    """One step's unmasking of block `x` [b] in plain numpy: the `quota` most confident masked positions (ties: the
    lower index), or with the dynamic strategy every masked position above the threshold when there are at least
    `quota` of them."""
    masked = x == cfg.mask_token_id
    k = min(quota, int(masked.sum()))
    order = sorted(np.nonzero(masked)[0], key=lambda i: (-conf[i], i))
    transfer = np.zeros(len(x), bool)
    transfer[order[:k]] = True
    if cfg.strategy == "low_confidence_dynamic":
        confident = masked & (conf > cfg.confidence_threshold)
        if confident.sum() >= quota:
            transfer = confident
    return np.where(transfer, tok, x)


def reference_generate(model, prompt, cfg: bj.SamplingConfig, *, pixel_values=None, image_grid_thw=None,
                       pixel_values_videos=None, video_grid_thw=None, rng=None) -> Reference:
    """The spec's algorithm for one prompt (a list of ids), one full forward per denoising step. Vision in the
    concatenated layout, named as `bj.generate` names it.

    Key schedule (temperature > 0): one key (`rng`, None -> jax.random.key(0)), split as `key, sub` before every
    denoising forward; `sub` draws the block's noise. commit="fold" and "forward": later blocks see a finished
    block's final tokens (the two differ only in how many forwards they take); commit="reuse": the tokens it had at
    the input of its last denoising forward (the cache keeps that forward's K/V; with block-causal attention a full
    forward of those ids recomputes exactly them).

    cfg.shift_labels: block position i reads the logits at context position len(context) + i - 1 (position 0: the
    last context token's, which with commit="reuse" is the input of the previous block's last denoising forward).
    """
    b, s = cfg.block_size, cfg.denoising_steps
    base, extra = divmod(b, s)
    quota = [base + (1 if i < extra else 0) for i in range(s)]
    key = jax.random.key(0) if rng is None else rng
    context, out, counts, commits = list(prompt), [], [], 0  # context: what later blocks attend to
    draws: dict[str, int] = {}
    for _ in range(cfg.num_blocks):
        x = np.full(b, cfg.mask_token_id)
        last_input = x
        steps = 0
        for step in range(s):
            masked = x == cfg.mask_token_id
            if not masked.any():
                break
            steps += 1
            key, sub = jax.random.split(key)
            first = len(context) - (1 if cfg.shift_labels else 0)
            logits = full_forward_logits(model, context + list(x), len(prompt), b, image_grid_thw, pixel_values,
                                         video_grid_thw, pixel_values_videos)[first:first + b]
            tok, conf, info = reference_choice(logits, cfg, sub)
            for name, n in info.items():
                draws[name] = draws.get(name, 0) + n
            last_input = x
            x = reference_transfer(x, tok, conf, quota[step], cfg)
        counts.append(steps)
        out += list(x)
        if (x == cfg.eos_token_id).any():
            break
        commits += 1
        context += list(last_input if cfg.commit == "reuse" else x)
    n = cfg.num_blocks * b
    tokens = np.array(out + [cfg.mask_token_id] * (n - len(out)))
    is_eos = tokens == cfg.eos_token_id
    upto = len(tokens) if not is_eos.any() else int(np.argmax(is_eos)) + 1
    generated = int((tokens[:upto] != cfg.mask_token_id).sum())
    forwards = sum(counts)
    if cfg.commit == "fold":  # a block is committed only when another block follows it
        commits = len(counts) - 1
    elif cfg.commit == "reuse":
        commits = 0
    nfe = forwards if cfg.commit == "fold" else 1 + forwards + commits
    return Reference(tokens, np.array(counts + [0] * (cfg.num_blocks - len(counts))), nfe,
                     len(prompt) + b * (forwards + commits), generated, generated / max(forwards, 1), draws)
