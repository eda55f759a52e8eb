"""Corruption of the noisy copy, inside jit (spec section 4).

Letters: B batch, S supervised slots (the noisy copy's response positions, padded to a bucket), b block size.

Every sample's randomness comes from `fold_in(seed_key, example_index)` (its global index in the data stream),
so the corruption is the same on any mesh, any number of processes and after a resume.

Priors (`NoiseConfig.prior`):
  mask      t_k stratified in [0.001, 1]; each token becomes the mask id with probability t_k.
  uniform   t_k stratified in [0, 0.999] is a *keep* probability; otherwise a uniform id in [0, replace_bound)
            other than `excluded_ids` (see `replacement_ids`).
  mix       per token, phi = pi/2 t: mask 1-cos(phi), uniform sin(phi)+cos(phi)-1, keep 1-sin(phi), each clamped to
            [0.001, 1] and renormalised.
  edit      one rate a ~ U[0.05, 0.2]; round(R a) edits (delete 0.2 / insert 0.2 / substitute 0.6) at random
            positions, then cut or pad back to R.
  mask_rate one rate per sample in [rate_min, rate_max]; tokens masked with that probability; optionally at least
            one mask.
Stratification: with n = R / b blocks, u_k ~ U[0, 1) clamped to [lo, hi], t_k = (u_k + k) / n, then a random
permutation over the blocks.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from bard_jax.errors import InputError

PRIORS = ("mask", "uniform", "mix", "edit", "mask_rate")


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    prior: str = "mask"
    mask_token_id: int = 151671
    replace_bound: int = 151646  # uniform replacements draw ids in [0, replace_bound)
    # Ids never drawn as replacements: the vision placeholders and the mask id. A replacement equal to an image pad
    # would be taken for a vision position (and given a window's embedding). With a Qwen vocabulary they all lie
    # above replace_bound, so this changes nothing there; it matters for small vocabularies whose special tokens
    # come first (the synthetic task's).
    excluded_ids: tuple[int, ...] = ()
    pad_token_id: int = 151645
    rate_min: float = 0.10  # mask_rate prior
    rate_max: float = 0.50
    at_least_one_mask: bool = True

    def __post_init__(self):
        if self.prior not in PRIORS:
            raise InputError(f"unknown noise prior {self.prior!r}; expected one of {PRIORS}")
        if not 0 < self.rate_min <= self.rate_max <= 1:
            raise InputError(f"mask rates must satisfy 0 < rate_min <= rate_max <= 1, got {self.rate_min}, "
                             f"{self.rate_max}")
        if self.replace_bound < 1:
            raise InputError(f"replace_bound must be >= 1, got {self.replace_bound}")
        if len(self.banned_ids) >= self.replace_bound:
            raise InputError(f"excluded_ids {list(self.excluded_ids)} leave no id in [0, {self.replace_bound}) to "
                             f"draw replacements from")

    @property
    def banned_ids(self) -> tuple[int, ...]:
        """The excluded ids that replacements could otherwise hit (inside [0, replace_bound)), ascending."""
        return tuple(sorted({int(i) for i in self.excluded_ids if 0 <= int(i) < self.replace_bound}))

    @property
    def t_range(self) -> tuple[float, float]:
        return (0.0, 0.999) if self.prior == "uniform" else (0.001, 1.0)


def stratified_block_times(key: jax.Array, num_blocks: jax.Array, max_blocks: int, lo: float, hi: float):
    """t [max_blocks]: entry k < num_blocks in stratum permuted; entries past num_blocks are 1 (unused)."""
    k_u, k_perm = jax.random.split(key)
    idx = jnp.arange(max_blocks)
    n = jnp.maximum(num_blocks, 1).astype(jnp.float32)
    t = (jnp.clip(jax.random.uniform(k_u, (max_blocks,)), lo, hi) + idx) / n
    # A random permutation of the first n entries: sort random keys, the unused blocks forced to the end.
    order = jnp.argsort(jnp.where(idx < num_blocks, jax.random.uniform(k_perm, (max_blocks,)), 2.0))
    return jnp.where(idx < num_blocks, t[order], 1.0)


def replacement_ids(key: jax.Array, shape: tuple[int, ...], cfg: NoiseConfig) -> jax.Array:
    """Uniform ids in [0, replace_bound) other than `cfg.excluded_ids`. Draws r uniform over the allowed count and
    maps it to the r-th allowed id (stepping over each banned id at or below it, in ascending order); with nothing
    banned below the bound it is exactly `randint(0, replace_bound)`, the reference's draw."""
    banned = cfg.banned_ids
    r = jax.random.randint(key, shape, 0, cfg.replace_bound - len(banned))
    for b in banned:
        r = r + (r >= b).astype(r.dtype)
    return r


def _edit(key: jax.Array, clean_s: jax.Array, length: jax.Array, cfg: NoiseConfig) -> jax.Array:
    """The Edit prior on one sample's response (static shapes: edits applied one by one in a loop)."""
    s = clean_s.shape[0]
    max_edits = int(math.ceil(0.2 * s)) + 1
    k_rate, k_ops, k_pos, k_tok = jax.random.split(key, 4)
    rate = jax.random.uniform(k_rate, (), minval=0.05, maxval=0.2)
    n_edits = jnp.round(length.astype(jnp.float32) * rate).astype(jnp.int32)
    ops = jax.random.choice(k_ops, 3, (max_edits,), p=jnp.array([0.2, 0.2, 0.6]))  # 0 delete, 1 insert, 2 sub
    pos_u = jax.random.uniform(k_pos, (max_edits,))
    toks = replacement_ids(k_tok, (max_edits,), cfg)
    idx = jnp.arange(s)

    def body(i, carry):
        x, cur = carry
        p = jnp.minimum((pos_u[i] * cur).astype(jnp.int32), jnp.maximum(cur - 1, 0))
        deleted = jnp.where(idx < p, x, jnp.roll(x, -1))
        inserted = jnp.where(idx < p, x, jnp.where(idx == p, toks[i], jnp.roll(x, 1)))
        substituted = jnp.where(idx == p, toks[i], x)
        new = jnp.select([ops[i] == 0, ops[i] == 1], [deleted, inserted], substituted)
        new_cur = cur + jnp.where(ops[i] == 0, -1, jnp.where(ops[i] == 1, 1, 0))
        active = i < n_edits
        return jnp.where(active, new, x), jnp.where(active, jnp.clip(new_cur, 1, s), cur)

    x, cur = jax.lax.fori_loop(0, max_edits, body, (clean_s, length))
    # Cut or pad back to R: positions past the edited length are padding.
    return jnp.where(idx < cur, x, cfg.pad_token_id)


def corrupt_sample(
    key: jax.Array,
    clean_s: jax.Array,
    valid_s: jax.Array,
    response_len: jax.Array,
    block_size: int,
    cfg: NoiseConfig,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Corrupt one sample's padded response.

    Args:
      clean_s: [S] clean response tokens (padded response, then slot padding); valid_s: [S] s < R.
      response_len: R (padded response length, a multiple of b).
    Returns:
      noisy [S] tokens, t [S] per-token noise level (the block's t; the sample's rate for mask_rate), and
      supervised [S] (positions that carry the PBM loss: masked / changed / all, per prior).
    """
    s = clean_s.shape[0]
    max_blocks = -(-s // block_size)
    num_blocks = response_len // block_size
    k_t, k_tok, k_rep, k_state, k_edit = jax.random.split(key, 5)
    lo, hi = cfg.t_range
    t_blocks = stratified_block_times(k_t, num_blocks, max_blocks, lo, hi)
    t = t_blocks[jnp.arange(s) // block_size]
    u = jax.random.uniform(k_tok, (s,))
    random_ids = replacement_ids(k_rep, (s,), cfg)
    mask_id = cfg.mask_token_id
    if cfg.prior == "mask":
        masked = (u <= t) & valid_s
        noisy = jnp.where(masked, mask_id, clean_s)
        supervised = masked
    elif cfg.prior == "uniform":
        replaced = (u < 1.0 - t) & valid_s
        noisy = jnp.where(replaced, random_ids, clean_s)
        supervised = valid_s
    elif cfg.prior == "mix":
        phi = (jnp.pi / 2) * t
        w = jnp.stack([1 - jnp.cos(phi), jnp.sin(phi) + jnp.cos(phi) - 1, 1 - jnp.sin(phi)], axis=-1)
        w = jnp.clip(w, 0.001, 1.0)
        state = jax.random.categorical(k_state, jnp.log(w / w.sum(-1, keepdims=True)), axis=-1)
        noisy = jnp.select([state == 0, state == 1], [jnp.full_like(clean_s, mask_id), random_ids], clean_s)
        noisy = jnp.where(valid_s, noisy, clean_s)
        supervised = (noisy != clean_s) & valid_s
    elif cfg.prior == "edit":
        noisy = jnp.where(valid_s, _edit(k_edit, clean_s, response_len, cfg), clean_s)
        supervised = valid_s
    else:  # mask_rate
        rate = jax.random.uniform(k_t, (), minval=cfg.rate_min, maxval=cfg.rate_max)
        masked = (u <= rate) & valid_s
        if cfg.at_least_one_mask:
            pick = jax.random.randint(k_rep, (), 0, jnp.maximum(response_len, 1))
            masked = masked | ((jnp.arange(s) == pick) & ~masked.any() & valid_s)
        noisy = jnp.where(masked, mask_id, clean_s)
        supervised = masked
        t = jnp.full((s,), rate)
    return noisy.astype(clean_s.dtype), t, supervised


def corrupt_batch(
    batch: dict[str, jax.Array], seed_key: jax.Array, block_size: int, cfg: NoiseConfig
) -> dict[str, jax.Array]:
    """Fill the noisy copy of a packed batch on device.

    Adds `noisy_tokens` [B, S], `t` [B, S] (doubled on the pad tail: half loss weight there), `supervised` [B, S],
    `is_mask` [B, S], `clean_tokens` [B, S], and returns `input_ids` with the noisy copy written in.
    """
    ids = batch["input_ids"]
    idx = batch["noisy_index"]
    valid_s = batch["noisy_valid"]
    clean_s = jnp.take_along_axis(ids, idx, axis=1)
    pad_tail_s = jnp.take_along_axis(batch["pad_tail"], idx, axis=1) & valid_s
    keys = jax.vmap(lambda i: jax.random.fold_in(seed_key, i))(batch["example_index"])
    noisy, t, supervised = jax.vmap(lambda k, c, v, r: corrupt_sample(k, c, v, r, block_size, cfg))(
        keys, clean_s, valid_s, batch["response_len"]
    )
    t = jnp.where(pad_tail_s, 2.0 * t, t)
    rows = jnp.arange(ids.shape[0])[:, None]
    new_ids = ids.at[rows, idx].set(jnp.where(valid_s, noisy, clean_s))
    out = dict(batch)
    out.update(
        input_ids=new_ids,
        noisy_tokens=noisy,
        clean_tokens=clean_s,
        t=t,
        supervised=supervised & valid_s,
        is_mask=(noisy == cfg.mask_token_id) & valid_s,
    )
    return out
