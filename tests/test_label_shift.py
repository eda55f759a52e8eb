"""The opt-in label shift (Fast-dLLM v2 / Dream convention): training reads slot s's prediction one position earlier,
decoding reads block position i's prediction from the logits at i - 1 (position 0: the token before the block).
The default (no shift) is the reference's convention and must be untouched."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers_sampler import (
    EOS,
    MASK,
    full_forward_logits,
    reference_generate,
    sharp_model,
)

import bard_jax as bj
from bard_jax import hf
from bard_jax.diffusion import layout, noise
from bard_jax.diffusion.losses import ObjectiveConfig, _hidden, loss_fn, prediction_index, weighted_ce
from bard_jax.errors import InputError
from bard_jax.model.vlm import Qwen3VL
from bard_jax.sampler import diffusion as sampler_impl


# ------------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def tiny():
    cfg = bj.preset("tiny")
    return bj.Model(bj.init_params(cfg, jax.random.key(1)), cfg)


def packed(prefix_lens=(5, 6), response_len=7, b=4, length=24, slots=8, seed=0):
    rng = np.random.default_rng(seed)
    samples = [layout.pack_sample(rng.integers(0, 900, p), rng.integers(0, 900, response_len), b, pad_token_id=3,
                                  image_token_id=1000, video_token_id=1001, spatial_merge_size=2)
               for p in prefix_lens]
    batch = layout.collate_packed(samples, length, slots)
    batch["example_index"] = np.arange(len(samples), dtype=np.int64)
    return {k: jnp.asarray(v) for k, v in batch.items()}


def test_prediction_index_by_hand():
    # Row 0: P = 5, R = 8 (b = 4): clean copy at 5..12, noisy copy at 13..20. Row 1: P = 6: clean 6..13, noisy 14..21.
    batch = packed()
    np.testing.assert_array_equal(np.asarray(prediction_index(batch, 4, False)), np.asarray(batch["noisy_index"]))
    got = np.asarray(prediction_index(batch, 4, True))
    # slot 0 -> last prefix token; slots 1-3 -> the noisy slot before; slot 4 -> the clean copy of slot 3.
    np.testing.assert_array_equal(got[0], [4, 13, 14, 15, 8, 17, 18, 19])
    np.testing.assert_array_equal(got[1], [5, 14, 15, 16, 9, 18, 19, 20])
    # Block size 2: every other slot reads the clean copy.
    np.testing.assert_array_equal(np.asarray(prediction_index(batch, 2, True))[0], [4, 13, 6, 15, 8, 17, 10, 19])
    # Slots past the response (R = 4 in 8 slots) stay inside the row.
    short = packed(response_len=3)
    assert (np.asarray(prediction_index(short, 4, True)) >= 0).all()


def hand_pbm(model, batch, key, obj, index):
    """The PBM loss from hidden states gathered at `index` [B, S] (given by hand), logits at full width."""
    c = noise.corrupt_batch(batch, key, obj.block_size, obj.noise)
    net, p, h = _hidden(model.config, obj, model.params, c, layout.token_info(c, obj.block_size))
    h_s = jnp.take_along_axis(h, jnp.asarray(index)[..., None], axis=1)
    logits = net.apply(p, h_s, method=Qwen3VL.logits).astype(jnp.float32)
    ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, c["clean_tokens"][..., None], -1)[..., 0]
    return weighted_ce(ce, c["supervised"], c["t"], c["response_len"], 2), c


def test_pbm_loss_with_shift_equals_the_hand_built_gather(tiny):
    batch = packed()
    key = jax.random.key(3)
    # The uniform prior supervises every response slot, so every shifted index carries loss.
    base = ObjectiveConfig(kind="pbm", block_size=4, noise=noise.NoiseConfig(prior="uniform", mask_token_id=1023,
                                                                            replace_bound=900), logits_chunk=3)
    shifted = dataclasses.replace(base, shift_labels=True)
    by_hand = np.array([[4, 13, 14, 15, 8, 17, 18, 19], [5, 14, 15, 16, 9, 18, 19, 20]])
    want, c = hand_pbm(tiny, batch, key, shifted, by_hand)
    assert bool(np.asarray(c["supervised"]).all())
    got, metrics = loss_fn(tiny.params, batch, key, model_config=tiny.config, obj=shifted, global_num_samples=2)
    np.testing.assert_allclose(float(got), float(want), rtol=2e-6)
    # No shift: unchanged (the default config, hidden states at the noisy copy itself), and not the shifted loss.
    plain, _ = loss_fn(tiny.params, batch, key, model_config=tiny.config, obj=base, global_num_samples=2)
    want_plain, _ = hand_pbm(tiny, batch, key, base, np.asarray(batch["noisy_index"]))
    np.testing.assert_allclose(float(plain), float(want_plain), rtol=2e-6)
    assert abs(float(plain) - float(got)) > 1e-3
    # Mask prior: only the masked slots carry loss, with the same shifted reads.
    masked = dataclasses.replace(shifted, noise=noise.NoiseConfig(mask_token_id=1023))
    got, _ = loss_fn(tiny.params, batch, key, model_config=tiny.config, obj=masked, global_num_samples=2)
    np.testing.assert_allclose(float(got), float(hand_pbm(tiny, batch, key, masked, by_hand)[0]), rtol=2e-6)


def test_shift_labels_is_pbm_only():
    for kind in ("swd", "ar"):
        with pytest.raises(InputError, match="shift_labels is supported by the pbm objective only"):
            ObjectiveConfig(kind=kind, shift_labels=True)
    assert ObjectiveConfig(kind="pbm", shift_labels=True).shift_labels


def test_recipe_plumbing_check_fingerprint_and_export_record():
    from bard_jax.train import setup
    from bard_jax.train.config import ObjectiveSection, TrainConfig, check_train_config
    from bard_jax.train.recipe import RecipeError, apply_overrides

    cfg = TrainConfig()
    assert not setup.objective_config(cfg, 1024, 1023, 3).shift_labels
    on = apply_overrides(cfg, {"objective.shift_labels": "true"})
    assert on.objective.shift_labels and setup.objective_config(on, 1024, 1023, 3).shift_labels
    check_train_config(on)
    with pytest.raises(RecipeError, match="objective.shift_labels"):
        check_train_config(dataclasses.replace(cfg, objective=ObjectiveSection(kind="swd", shift_labels=True)))
    model_config = bj.preset("tiny")
    assert "shift_labels" not in setup.fingerprint(cfg, model_config)  # older checkpoints keep resuming
    assert setup.fingerprint(on, model_config)["shift_labels"] is True
    assert setup.training_record(cfg) == {"objective": "pbm", "block_size": 4, "shift_labels": False}
    assert setup.training_record(on)["shift_labels"] is True


def test_export_marker_records_the_training_and_still_loads(tiny, tmp_path):
    params = jax.device_get(tiny.params)
    out = hf.save_converted(params, tiny.config, None, tmp_path / "m", training={"shift_labels": True})
    marker = json.load(open(tmp_path / "m" / hf.CONVERTED_MARKER))
    assert marker["training"] == {"shift_labels": True}
    hf.read_converted_config(out)
    hf.save_converted(params, tiny.config, None, tmp_path / "n")
    assert "training" not in json.load(open(tmp_path / "n" / hf.CONVERTED_MARKER))


# ------------------------------------------------------------------------------------------------ decoding
CASES = [
    # (strategy, steps, threshold, commit, sampled)
    ("low_confidence_static", 4, 0.9, "forward", False),  # one token per step, greedy
    ("low_confidence_dynamic", 2, 0.6, "fold", False),
    ("low_confidence_dynamic", 2, 0.6, "forward", False),
    ("low_confidence_static", 2, 0.9, "fold", True),
    ("low_confidence_static", 3, 0.9, "reuse", False),
    pytest.param("low_confidence_dynamic", 4, 0.6, "reuse", True, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("strategy,s,tau,commit,sampled", CASES)
def test_shifted_sampler_equals_the_full_recompute_reference(strategy, s, tau, commit, sampled):
    model = sharp_model(False, sharpness=25 if sampled else None)
    rng = np.random.default_rng(11)
    prompt = list(rng.integers(0, 900, 7))
    other = dict(temperature=0.8, top_k=20, top_p=0.9) if sampled else {}
    cfg = bj.SamplingConfig(max_new_tokens=12, block_size=4, denoising_steps=s, strategy=strategy,
                            confidence_threshold=tau, mask_token_id=MASK, eos_token_id=EOS, commit=commit,
                            shift_labels=True, **other)
    key = jax.random.key(5)
    out = bj.generate(model, np.array([prompt]), cfg, rng=key)
    ref = reference_generate(model, prompt, cfg, rng=key)
    tokens, counts = ref.tokens, ref.counts
    np.testing.assert_array_equal(np.asarray(out.tokens[0]), tokens)
    np.testing.assert_array_equal(out.stats["block_step_counts"][0], counts)
    assert (tokens != EOS).all()
    # The shift changes the output (else the case could not tell the two conventions apart), and the no-shift
    # setting is still the reference's algorithm.
    plain_cfg = dataclasses.replace(cfg, shift_labels=False)
    plain = np.asarray(bj.generate(model, np.array([prompt]), plain_cfg, rng=key).tokens[0])
    assert (plain != tokens).any()
    np.testing.assert_array_equal(plain, reference_generate(model, prompt, plain_cfg, rng=key).tokens)
    # The first token of block 0 is always read from the last prompt token's logits (an independent forward).
    if not sampled:
        assert tokens[0] == full_forward_logits(model, prompt, len(prompt), 4)[-1].argmax()
    # bj.sample (one compiled program) agrees with bj.generate (prefill and decode compiled apart).
    np.testing.assert_array_equal(np.asarray(bj.sample(model, np.array([prompt]), config=cfg, rng=key).tokens[0]),
                                  tokens)


def test_no_shift_path_carries_nothing_and_shift_carries_the_prompt_logits():
    model = sharp_model(False)
    ids = np.random.default_rng(0).integers(0, 900, (2, 6))
    mask = np.ones_like(ids, bool)
    mask[1, :2] = False
    cfg = bj.SamplingConfig(max_new_tokens=8, block_size=4, mask_token_id=MASK, eos_token_id=EOS)
    assert cfg == dataclasses.replace(cfg, shift_labels=False) and not cfg.prefill_settings().shift_labels
    assert dataclasses.replace(cfg, shift_labels=True).prefill_settings().shift_labels
    inputs = sampler_impl._checked(model, ids, cfg, mask, {k: None for k in sampler_impl.VISION_ARGS}, None, "test")
    carry, _, _ = sampler_impl._prefill_jit(model.for_jit(), inputs, cfg=cfg.prefill_settings())
    assert carry.last_logits is None
    on = dataclasses.replace(cfg, shift_labels=True)
    carry, _, _ = sampler_impl._prefill_jit(model.for_jit(), inputs, cfg=on.prefill_settings())
    for row, start in ((0, 0), (1, 2)):  # each row's last prompt token, whatever its left padding
        want = full_forward_logits(model, list(ids[row, start:]), 6 - start, 4)[-1]
        np.testing.assert_allclose(np.asarray(carry.last_logits[row], np.float64), want, atol=2e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="shift_labels must be a bool"):
        bj.SamplingConfig(shift_labels=1)


@pytest.mark.parametrize("commit", ["fold", "forward"])
def test_shifted_batched_rows_equal_rows_decoded_alone(commit):
    # Not "reuse": there a row that finishes its block before the others takes the K/V (and, with the shift, the
    # last-position logits) of the batch's last denoising forward, so rows are not independent of their batch there,
    # with or without the shift.
    model = sharp_model(False, seed=3)
    rng = np.random.default_rng(7)
    prompts = [list(rng.integers(0, 900, n)) for n in (9, 4, 6)]
    cfg = bj.SamplingConfig(max_new_tokens=12, block_size=4, denoising_steps=2, strategy="low_confidence_dynamic",
                            confidence_threshold=0.6, mask_token_id=MASK, eos_token_id=EOS, commit=commit,
                            shift_labels=True)
    # EOS = a token that row 0 emits in its second block, so the rows stop in different blocks.
    eos = int(np.asarray(bj.generate(model, np.array([prompts[0]]), cfg).tokens[0])[5])
    cfg = dataclasses.replace(cfg, eos_token_id=eos)
    alone = [np.asarray(bj.generate(model, np.array([p]), cfg).tokens[0]) for p in prompts]
    width = max(map(len, prompts))
    ids = np.zeros((3, width), np.int32)
    mask = np.zeros((3, width), bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, True
    out = bj.generate(model, ids, cfg, attention_mask=mask)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(out.tokens[i]), alone[i], err_msg=f"row {i}")
    assert (alone[0] == eos).any() and not all((a == eos).any() for a in alone)


# ------------------------------------------------------------------------------------------------ eval settings
def test_eval_settings_record_the_shift_only_when_on(tmp_path):
    from bard_jax.eval import decode
    from bard_jax.eval.__main__ import parse_args
    from bard_jax.eval.errors import EvalError
    from bard_jax.eval.settings import RunSettings, check_resumable, write_run_file

    off = RunSettings(model="m").for_task(16)
    on = RunSettings(model="m", shift_labels=True).for_task(16)
    assert "shift_labels" not in off and on["shift_labels"] is True
    assert "shift_labels" not in RunSettings(model="m", decoder="ar", shift_labels=True).for_task(16)
    assert not decode.decoder_config(off, 1, 0).shift_labels and decode.decoder_config(on, 1, 0).shift_labels
    # A run.json written without the key (before the option existed) resumes as a no-shift run, and refuses a
    # shifted one.
    write_run_file(str(tmp_path), off, None, True)  # finished (an unfinished run with no sample holds nothing)
    check_resumable(str(tmp_path), off)
    with pytest.raises(EvalError, match="shift_labels"):
        check_resumable(str(tmp_path), on)
    base = ["run", "--model", "m", "--data-root", "r", "--tasks", "mme", "--out", "o"]
    assert parse_args(base + ["--shift-labels"]).shift_labels and not parse_args(base).shift_labels


# ------------------------------------------------------------------------------------- SWD with the AR teacher
def test_swd_with_the_ar_teacher_distils_its_next_token_distribution_given_the_clean_prefix(tiny):
    """teacher_kind="ar": the teacher's logits for slot s are those of a plain token-causal forward of
    [prefix | clean response] at the token before s (the last prefix token for s = 0), computed here unpacked."""
    from bard_jax.diffusion.losses import topk_kd
    from bard_jax.model.attention import TokenInfo
    from bard_jax.model.hidden import hidden_states
    from bard_jax.modeling import network

    teacher = bj.Model(bj.init_params(tiny.config, jax.random.key(7)), tiny.config)
    batch = packed(response_len=7, b=8, length=32, slots=8)
    key = jax.random.key(5)
    obj = ObjectiveConfig(kind="swd", block_size=8, teacher_block_size=1, teacher_kind="ar", top_k=4,
                          noise=noise.NoiseConfig(mask_token_id=1023), logits_chunk=3)
    got, metrics = loss_fn(tiny.params, batch, key, teacher.params, model_config=tiny.config, obj=obj,
                           global_num_samples=2)
    c = noise.corrupt_batch(batch, key, obj.block_size, obj.noise)
    net, p, h = _hidden(tiny.config, obj, tiny.params, c, layout.token_info(c, obj.block_size))
    z = net.apply(p, jnp.take_along_axis(h, c["noisy_index"][..., None], axis=1),
                  method=Qwen3VL.logits).astype(jnp.float32)
    tnet = network(tiny.config, None, "none", False)
    ce_rows, kd_rows = [], []
    for row in range(2):
        p_len = int(batch["prefix_len"][row])
        r = int(batch["real_response_len"][row])
        seq = np.asarray(batch["input_ids"][row, :p_len + 8])  # [prefix | clean copy], the noisy copy left out
        pos = jnp.asarray(np.asarray(batch["positions"])[:, row, None, :p_len + 8])  # [3, 1, P + R]
        th, _ = hidden_states(tnet, teacher.params, jnp.asarray(seq[None], jnp.int32), pos,
                              TokenInfo.causal(jnp.ones((1, p_len + 8), bool)))
        zt = tnet.apply({"params": teacher.params}, th[0, p_len - 1:p_len + 7], method=Qwen3VL.logits)
        sel = np.asarray(c["is_mask"][row])
        y = np.asarray(c["clean_tokens"][row])
        zs = z[row]
        ce = jax.nn.logsumexp(zs, -1) - jnp.take_along_axis(zs, jnp.asarray(y)[:, None], -1)[:, 0]
        kd = topk_kd(zs, zt.astype(jnp.float32), 4, 1.0)
        n = max(sel.sum(), 1)
        ce_rows.append(float(jnp.sum(jnp.where(sel, ce, 0.0))) / n)
        kd_rows.append(float(jnp.sum(jnp.where(sel, kd, 0.0))) / n)
        assert r == 7 and sel.any()
    want = (sum(ce_rows) + 0.5 * sum(kd_rows)) / 2
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["kd"]), sum(kd_rows) / 2, rtol=1e-5)
    # The diffusion teacher (the default) gives another loss on the same batch.
    diffusion = dataclasses.replace(obj, teacher_kind="diffusion", teacher_block_size=4)
    other, _ = loss_fn(tiny.params, batch, key, teacher.params, model_config=tiny.config, obj=diffusion,
                       global_num_samples=2)
    assert abs(float(other) - float(got)) > 1e-4
    with pytest.raises(InputError, match="teacher_kind"):
        ObjectiveConfig(kind="swd", teacher_kind="oracle")
