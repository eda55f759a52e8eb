"""The autoregressive baseline decoder: greedy tokens equal transformers' generate on the same checkpoint."""

import numpy as np
import pytest

pytest.importorskip("torch", reason="compares against transformers' torch models (the test extras)")
import torch
from test_model_parity import make_checkpoint

import bard_jax as bj
from bard_jax.sampler.ar import ARConfig, generate_ar


def test_greedy_ar_matches_transformers_generate(tmp_path):
    hf = make_checkpoint(tmp_path, tied=False)
    with torch.no_grad():  # sharpen the head so greedy choices are not near-ties
        hf.lm_head.weight.mul_(30)
    hf.save_pretrained(tmp_path)
    model = bj.load_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, 400, 7)), list(rng.integers(0, 400, 4))]
    cfg = ARConfig(max_new_tokens=10, eos_token_id=511)
    width = 7
    ids = np.zeros((2, width), np.int64)
    mask = np.zeros((2, width), np.int64)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    ours = np.asarray(generate_ar(model, ids, cfg, attention_mask=mask).tokens)
    for i, p in enumerate(prompts):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False, eos_token_id=511,
                              pad_token_id=511)[0, len(p):].numpy()
        np.testing.assert_array_equal(ours[i, : len(ref)], ref, err_msg=f"row {i}")
