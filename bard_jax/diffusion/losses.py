"""Training objectives: PBM (weighted CE), SWD (top-k distillation + CE), and the AR baseline (spec section 5).

Letters: B batch, L tokens, S supervised slots, D width, V vocab, K teacher top-k.

The LM head is applied only at supervised positions: hidden states are gathered first ([B, S, D]) and the logits
are computed in chunks of slots under `jax.checkpoint`, so neither an [L, V] nor a full [S, V] float32 tensor has
to stay alive for the backward pass. All loss math is float32. Every loss is already divided by the *global*
number of samples (all micro-batches, all devices), so micro-batch losses and gradients simply add up.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from bard_jax.config import ModelConfig
from bard_jax.diffusion.layout import token_info
from bard_jax.diffusion.noise import NoiseConfig, corrupt_batch
from bard_jax.errors import InputError
from bard_jax.model.attention import NOISY, AttentionConfig, TokenInfo
from bard_jax.model.example_vision import per_example_vision
from bard_jax.model.hidden import hidden_states
from bard_jax.model.vlm import Qwen3VL
from bard_jax.modeling import network, resolve_dtype

OBJECTIVES = ("ar", "pbm", "swd")

@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    kind: str = "pbm"  # ar | pbm | swd
    block_size: int = 4
    noise: NoiseConfig = NoiseConfig()
    clean_sees_noisy: bool = True
    teacher_block_size: int = 4
    top_k: int = 16
    ce_weight: float = 1.0
    kd_weight: float = 0.5
    temperature: float = 1.0
    remat_policy: str = "none"
    compute_dtype: str = "float32"
    logits_chunk: int = 256  # supervised slots per head chunk
    attention: AttentionConfig = AttentionConfig()  # dense | flash | auto (by size), tile sizes
    # Opt-in label shift (Fast-dLLM v2 / Dream): response token s is predicted from the position before it (see
    # `prediction_index`). False (the default) is the reference's no-shift convention.
    shift_labels: bool = False
    # SWD's teacher: "diffusion" (the reference: the small-block anchor, run on the student's corrupted sample under
    # its own block mask) or "ar" (an autoregressive model: its next-token distribution given the clean prefix; the
    # paper's ablation of distilling straight from the AR source).
    teacher_kind: str = "diffusion"

    def __post_init__(self):
        if self.kind not in OBJECTIVES:
            raise InputError(f"unknown objective {self.kind!r}; expected one of {OBJECTIVES}")
        if self.block_size < 1:
            raise InputError(f"block_size must be >= 1, got {self.block_size}")
        if self.kind == "swd" and self.block_size % self.teacher_block_size:
            raise InputError(
                f"teacher block size {self.teacher_block_size} must divide the student block size {self.block_size}"
            )
        if self.teacher_kind not in ("diffusion", "ar"):
            raise InputError(f"unknown teacher_kind {self.teacher_kind!r}; expected 'diffusion' or 'ar'")
        if self.shift_labels and self.kind != "pbm":
            raise InputError(f"shift_labels is supported by the pbm objective only (objective {self.kind!r})")


def _hidden(model_config: ModelConfig, obj: ObjectiveConfig, params: Any, batch: dict, info: TokenInfo):
    """(network, variables, final hidden states [B, L, D]) of a (packed or plain) batch. A batch without
    `pixel_values` or `pixel_values_videos` (text only) runs no vision tower; with them, each example's tower runs
    on its own images then videos, grouped as the samplers group a prompt's (`per_example_vision`)."""
    net = network(model_config, resolve_dtype(obj.compute_dtype), obj.remat_policy, False, obj.clean_sees_noisy,
                  obj.attention)
    vision = None
    if "pixel_values" in batch or "pixel_values_videos" in batch:
        vision = per_example_vision(model_config, batch.get("pixel_values"), batch.get("image_grid_thw"),
                                    batch["input_ids"], batch.get("pixel_values_videos"), batch.get("video_grid_thw"))
    h, _ = hidden_states(net, params, batch["input_ids"], batch["positions"], info, vision=vision)
    return net, {"params": params}, h


def _chunked(fn, chunk: int, *arrays):
    """Apply fn over chunks of the slot axis (axis 1) with rematerialisation; outputs concatenated on axis 1."""
    s = arrays[0].shape[1]
    chunk = min(chunk, s)
    n = -(-s // chunk)
    pad = n * chunk - s
    padded = [jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2)) for a in arrays]
    split = [a.reshape((a.shape[0], n, chunk) + a.shape[2:]).swapaxes(0, 1) for a in padded]
    outs = jax.lax.map(jax.checkpoint(lambda xs: fn(*xs)), tuple(split))
    return jax.tree_util.tree_map(lambda o: o.swapaxes(0, 1).reshape((o.shape[1], n * chunk) + o.shape[3:])[:, :s],
                                  outs)


def _ce(net, p, h_bsd, labels_bs):
    """Cross-entropy [B, S] (float32) of labels under the head's logits at the given hidden states."""

    def f(h, y):
        logits = net.apply(p, h, method=Qwen3VL.logits).astype(jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        return lse - jnp.take_along_axis(logits, jnp.maximum(y, 0)[..., None], axis=-1)[..., 0]

    return f(h_bsd, labels_bs)


def weighted_ce(ce_bs, supervised_bs, t_bs, response_len_b, global_num_samples: int) -> jax.Array:
    """PBM normalisation: sum_s ce/t over supervised slots, / R per sample, summed, / global sample count.

    t <= 0 at a supervised slot is an error of the corruption; it is clamped to 1e-12 (a huge, finite weight
    that the NaN guard of the train step will report) rather than silently producing inf.
    """
    weight = jnp.where(supervised_bs, 1.0 / jnp.maximum(t_bs, 1e-12), 0.0)
    per_sample = jnp.sum(ce_bs * weight, axis=1) / jnp.maximum(response_len_b, 1).astype(jnp.float32)
    return jnp.sum(per_sample) / global_num_samples


def topk_kd(z_sv: jax.Array, zt_sv: jax.Array, top_k: int, temperature: float) -> jax.Array:
    """Per-position KD [..]: -sum_k softmax(v/T)_k * log_softmax(z/T)[I_k] over the teacher's top-k (v, I).

    The teacher distribution is renormalised over its top-k only; the student is normalised over the full
    vocabulary. Its gradient is that of the forward KL restricted to the teacher's top-k; no T^2 factor.
    """
    v, ids = jax.lax.top_k(zt_sv, top_k)
    q = jax.nn.softmax(v / temperature, axis=-1)
    logp = jax.nn.log_softmax(z_sv / temperature, axis=-1)
    return -jnp.sum(q * jnp.take_along_axis(logp, ids, axis=-1), axis=-1)


def prediction_index(batch: dict, block_size: int, shift_labels: bool) -> jax.Array:
    """Positions [B, S] of the hidden states that predict the supervised slots of a packed batch.

    No shift (the reference): slot s is read at its own noisy position `noisy_index[s]`. With the label shift: at
    the position before it, `noisy_index[s] - 1`, except for the first slot of a block (s % b == 0), which is read
    at the clean token before the block, `prefix_len + s - 1` (the last clean token of the previous block, or for
    s = 0 the last prefix token). Slots past the response (unsupervised) are clipped into the row.
    """
    idx = batch["noisy_index"]
    if not shift_labels:
        return idx
    slot = jnp.arange(idx.shape[1])[None]
    clean_before = batch["prefix_len"][:, None] + slot - 1
    shifted = jnp.where(slot % block_size == 0, clean_before, idx - 1)
    return jnp.clip(shifted, 0, batch["input_ids"].shape[1] - 1)


def pbm_loss(params, batch, seed_key, *, model_config, obj: ObjectiveConfig, global_num_samples: int):
    """Weighted CE over supervised noisy positions: weight 1/t, per-sample sum / R, sum over samples / N_global.
    With `obj.shift_labels` the prediction of each slot is read one position earlier (`prediction_index`)."""
    batch = corrupt_batch(batch, seed_key, obj.block_size, obj.noise)
    net, p, h = _hidden(model_config, obj, params, batch, token_info(batch, obj.block_size))
    pred = prediction_index(batch, obj.block_size, obj.shift_labels)
    h_s = jnp.take_along_axis(h, pred[..., None], axis=1)
    ce = _chunked(lambda hh, yy: _ce(net, p, hh, yy), obj.logits_chunk, h_s, batch["clean_tokens"])
    sup = batch["supervised"]
    loss = weighted_ce(ce, sup, batch["t"], batch["response_len"], global_num_samples)
    metrics = {
        "pbm_loss": loss,
        "supervised_tokens": jnp.sum(sup).astype(jnp.float32),
        "ce_supervised_sum": jnp.sum(jnp.where(sup, ce, 0.0)),
    }
    return loss, metrics


def swd_loss(params, batch, seed_key, teacher_params, *, model_config, obj: ObjectiveConfig,
             global_num_samples: int, teacher_config: ModelConfig | None = None):
    """ce_weight * CE + kd_weight * top-k KD at the masked noisy positions; teacher under stop_gradient.

    Per sample: both terms are means over its masked tokens (the release normalises per micro-batch of one
    sample); a sample without a masked token contributes zero and still counts in the global sample count.
    """
    batch = corrupt_batch(batch, seed_key, obj.block_size, obj.noise)
    net, p, h = _hidden(model_config, obj, params, batch, token_info(batch, obj.block_size))
    t_obj = dataclasses.replace(obj, remat_policy="none")
    idx = batch["noisy_index"][..., None]
    h_s = jnp.take_along_axis(h, idx, axis=1)
    t_params = jax.lax.stop_gradient(teacher_params)
    if obj.teacher_kind == "ar":
        # The AR teacher reads `[prefix | clean]` token-causally (the noisy copy masked out) and predicts slot s at
        # the clean token before it: p_AR(x_s | x_<s), with the whole clean response before s in view.
        valid = batch["valid"] & (batch["kind"] != NOISY)
        tnet, tp, th = _hidden(teacher_config or model_config, t_obj, t_params, dict(batch, valid=valid),
                               TokenInfo.causal(valid))
        slot = jnp.arange(idx.shape[1])[None]
        t_idx = jnp.clip(batch["prefix_len"][:, None] + slot - 1, 0, th.shape[1] - 1)[..., None]
    else:
        tnet, tp, th = _hidden(teacher_config or model_config, t_obj, t_params, batch,
                               token_info(batch, obj.teacher_block_size))
        t_idx = idx
    th_s = jax.lax.stop_gradient(jnp.take_along_axis(th, t_idx, axis=1))
    temp = obj.temperature

    def chunk(hh, thh, yy):
        z = net.apply(p, hh, method=Qwen3VL.logits).astype(jnp.float32)
        zt = jax.lax.stop_gradient(tnet.apply(tp, thh, method=Qwen3VL.logits).astype(jnp.float32))
        kd = topk_kd(z, zt, obj.top_k, temp)
        lse = jax.nn.logsumexp(z, axis=-1)
        ce = lse - jnp.take_along_axis(z, jnp.maximum(yy, 0)[..., None], axis=-1)[..., 0]
        return ce, kd

    ce, kd = _chunked(chunk, obj.logits_chunk, h_s, th_s, batch["clean_tokens"])
    sel = batch["is_mask"]
    n = jnp.sum(sel, axis=1).astype(jnp.float32)
    ce_s = jnp.sum(jnp.where(sel, ce, 0.0), axis=1) / jnp.maximum(n, 1.0)
    kd_s = jnp.sum(jnp.where(sel, kd, 0.0), axis=1) / jnp.maximum(n, 1.0)
    ce_loss = jnp.sum(ce_s) / global_num_samples
    kd_loss = jnp.sum(kd_s) / global_num_samples
    loss = obj.ce_weight * ce_loss + obj.kd_weight * kd_loss
    return loss, {"ce": ce_loss, "kd": kd_loss, "masked_tokens": jnp.sum(n)}


def ar_loss(params, batch, *, model_config, obj: ObjectiveConfig, global_num_samples: int):
    """Token-causal next-token CE over response tokens; per-sample mean, sum over samples / N_global.

    Uses the clean part of a packed batch: `[prefix | clean]` (the AR training stream packs no noisy copy), or a
    full packed batch whose noisy copy is masked out, with the same result. Position i predicts token i + 1.
    """
    kind = batch["kind"]
    valid = batch["valid"] & (kind != NOISY)
    length = valid.shape[1]
    info = TokenInfo.causal(valid)
    net, p, h = _hidden(model_config, obj, params, dict(batch, valid=valid), info)
    # Supervised slots: the predecessor of each real response token of the clean copy.
    r_real = batch["real_response_len"]
    s = batch["noisy_index"].shape[1]
    slot = jnp.arange(s)[None]
    target_pos = batch["prefix_len"][:, None] + slot  # clean copy positions
    pred_pos = jnp.clip(target_pos - 1, 0, length - 1)
    labels = jnp.take_along_axis(batch["input_ids"], jnp.clip(target_pos, 0, length - 1), axis=1)
    sup = slot < r_real[:, None]
    h_s = jnp.take_along_axis(h, pred_pos[..., None], axis=1)
    ce = _chunked(lambda hh, yy: _ce(net, p, hh, yy), obj.logits_chunk, h_s, labels)
    per_sample = jnp.sum(jnp.where(sup, ce, 0.0), axis=1) / jnp.maximum(r_real, 1).astype(jnp.float32)
    loss = jnp.sum(per_sample) / global_num_samples
    return loss, {"ar_loss": loss, "response_tokens": jnp.sum(sup).astype(jnp.float32)}


def loss_fn(params, batch, seed_key, teacher_params=None, *, model_config: ModelConfig, obj: ObjectiveConfig,
            global_num_samples: int, teacher_config: ModelConfig | None = None):
    """The objective named by `obj.kind`; returns (loss, metrics)."""
    if obj.kind == "ar":
        return ar_loss(params, batch, model_config=model_config, obj=obj, global_num_samples=global_num_samples)
    if obj.kind == "pbm":
        return pbm_loss(params, batch, seed_key, model_config=model_config, obj=obj,
                        global_num_samples=global_num_samples)
    if teacher_params is None:
        raise InputError("the swd objective needs teacher_params")
    return swd_loss(params, batch, seed_key, teacher_params, model_config=model_config, obj=obj,
                    global_num_samples=global_num_samples, teacher_config=teacher_config)
