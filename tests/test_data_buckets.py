"""Right-sized vision in training batches: the patch bucket chosen per batch, text-only batches without pixels."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading

import jax
import numpy as np
import pytest

import bard_jax as bj
from bard_jax.data.pipeline import (
    PipelineConfig,
    TrainStream,
    collate_images,
    largest_patch_bucket,
    patch_buckets,
    read_jsonl,
)
from bard_jax.data.processor import Processor
from bard_jax.data.shape_agreement import StoreShapes
from bard_jax.data.synthetic import generate
from bard_jax.diffusion import noise
from bard_jax.diffusion.losses import ObjectiveConfig, loss_fn
from bard_jax.model import hidden as hidden_lib

C = 6  # patch values per row in the hand-made samples


def sample(rows: int, images: int) -> dict:
    """What `TrainStream.attempt` gives `collate_images`: an example's pixel rows and grid rows."""
    grid = np.array([[1, 2, rows // images // 2]] * images) if images else np.zeros((0, 3), np.int64)
    return {"pixels": np.full((rows, C), 1.0, np.float32), "grid": grid}


def test_patch_bucket_is_the_smallest_holding_the_batchs_largest_example():
    cfg = PipelineConfig(pixel_rows=64, patch_buckets=(128, 16, 8, 64))
    buckets = patch_buckets(cfg)
    assert buckets == (8, 16, 64)  # ascending, nothing at or above the largest, which is pixel_rows
    assert patch_buckets(PipelineConfig(pixel_rows=32)) == (32,)
    for rows, want in ((4, 8), (8, 8), (12, 16), (16, 16), (20, 64), (64, 64)):
        out = collate_images([sample(rows, 1), sample(0, 0), sample(4, 2)], buckets, 3, C)
        assert out["pixel_values"].shape == (3, want, C) and out["image_grid_thw"].shape == (3, 3, 3), rows
        np.testing.assert_array_equal(out["pixel_values"][0, :rows], 1.0)
        assert not out["pixel_values"][0, rows:].any() and not out["pixel_values"][1].any()
        assert out["image_grid_thw"][2, :2].all() and not out["image_grid_thw"][2, 2:].any()
    assert collate_images([sample(0, 0), sample(0, 0)], buckets, 3, C) == {}  # text only: no vision keys


def test_largest_patch_bucket_follows_max_pixels():
    kw = dict(patch_size=16, merge_size=2, max_length=8192)
    # One 2048 x 2048 image is 128 x 128 patches; four images at 1024 x 1024 likewise; the token budget caps more.
    assert largest_patch_bucket(max_pixels=2048 * 2048, max_images=1, **kw) == 16384
    assert largest_patch_bucket(max_pixels=1024 * 1024, max_images=4, **kw) == 16384
    assert largest_patch_bucket(max_pixels=1024 * 1024, max_images=1, **kw) == 4096
    assert largest_patch_bucket(max_pixels=2048 * 2048, max_images=4, **kw) == 4 * 8192


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return str(generate(str(tmp_path_factory.mktemp("syn")), n=24, seed=3, n_eval=4))


def stream(synthetic: str, records: list[dict]) -> TrainStream:
    # The synthetic images are 16 or 24 pixel rows: buckets 16 and 32.
    cfg = PipelineConfig(global_batch_size=2, block_size=4, length_buckets=(64, 128), pixel_rows=32,
                         patch_buckets=(16,), max_images=1, seed=1)
    return TrainStream(records, Processor.from_pretrained(synthetic), cfg, image_root=synthetic)


def text_only(records: list[dict]) -> list[dict]:
    """The same conversations with their image parts removed."""
    out = []
    for rec in records:
        messages = [dict(m, content=[c for c in m["content"] if c["type"] != "image"]) for m in rec["messages"]]
        out.append(dict(rec, messages=messages))
    return out


def test_stream_chooses_the_patch_bucket_per_batch(synthetic):
    records, _ = read_jsonl(os.path.join(synthetic, "train.jsonl"))
    s = stream(synthetic, records)
    seen = set()
    for _ in range(8):
        batch = s.next_batch()
        need = int(np.prod(batch["image_grid_thw"], axis=-1).sum(axis=-1).max())
        rows = batch["pixel_values"].shape[1]
        assert rows == (16 if need <= 16 else 32), (need, rows)
        seen.add(rows)
    assert seen == {16, 32}
    plain = stream(synthetic, text_only(records)).next_batch()
    assert "pixel_values" not in plain and "image_grid_thw" not in plain


def test_text_only_batch_trains_without_the_vision_tower(synthetic, monkeypatch):
    records, _ = read_jsonl(os.path.join(synthetic, "train.jsonl"))
    s = stream(synthetic, text_only(records))
    batch = {k: jax.numpy.asarray(v) for k, v in s.next_batch().items()}
    assert "pixel_values" not in batch
    tok = s.proc.tokenizer
    base = bj.preset("tiny")
    config = base.replace(text=dataclasses.replace(base.text, vocab_size=len(tok)),
                          image_token_id=s.image_token_id, video_token_id=s.video_token_id)
    params = bj.init_params(config, jax.random.key(0))

    def no_tower(*args):
        raise AssertionError("a text-only batch must not run the vision tower")

    monkeypatch.setattr(hidden_lib, "encode_vision", no_tower)
    obj = ObjectiveConfig(kind="pbm", block_size=4, noise=noise.NoiseConfig(
        mask_token_id=len(tok) - 1, replace_bound=len(tok), pad_token_id=s.pad_id))
    grad_fn = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, batch, jax.random.key(0), model_config=config, obj=obj,
                                                           global_num_samples=2), has_aux=True))
    (loss, metrics), grads = grad_fn(params)
    assert np.isfinite(float(loss)) and float(metrics["supervised_tokens"]) > 0
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
    assert not any(np.asarray(g).any() for g in jax.tree_util.tree_leaves(grads["visual"]))
    assert any(np.asarray(g).any() for g in jax.tree_util.tree_leaves(grads["language_model"]))


# ------------------------------------------------------------------------------------------------ several hosts
class FakeStore:
    """jax.distributed's key-value client interface, in memory, shared by threads standing in for hosts."""

    def __init__(self):
        self.values: dict[str, str] = {}
        self.changed = threading.Condition()

    def key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None:
        with self.changed:
            assert allow_overwrite or key not in self.values, key
            self.values[key] = value
            self.changed.notify_all()

    def blocking_key_value_get(self, key: str, timeout_in_ms: int) -> str:
        with self.changed:
            if not self.changed.wait_for(lambda: key in self.values, timeout_in_ms / 1000):
                raise RuntimeError(f"DEADLINE_EXCEEDED: GetKeyValue() timed out with key: {key}")
            return self.values[key]

    def key_value_delete(self, key: str) -> None:
        with self.changed:
            self.values.pop(key, None)


def test_hosts_with_different_data_agree_on_every_batch_shape(synthetic):
    """Two hosts, each with its half of every global batch of 2: one draws the image sample, the other the longer
    text-only one. Agreeing through the store, both slices have the same keys and shapes (the text host carries zero
    pixel rows), and together they are exactly the batch one host collates for the whole global batch."""
    records, _ = read_jsonl(os.path.join(synthetic, "train.jsonl"))
    long_text = text_only(records[1:2])[0]
    long_text["messages"][0]["content"][0]["text"] = " ".join(["how many red shapes are there ?"] * 10)
    data = [records[0], long_text]  # one epoch per global batch: each host gets one of the two every time
    store = FakeStore()
    hosts = [dataclasses.replace(stream(synthetic, data).cfg, shard_index=i, shard_count=2) for i in (0, 1)]
    proc = Processor.from_pretrained(synthetic)
    streams = [TrainStream(data, proc, cfg, image_root=synthetic, shapes=StoreShapes(store, i, 2))
               for i, cfg in enumerate(hosts)]
    alone = [TrainStream(data, proc, cfg, image_root=synthetic) for cfg in hosts]  # no agreement
    whole = stream(synthetic, data)  # one host, the whole global batch
    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            slices = list(pool.map(lambda s: s.next_batch(), streams))
        own = [s.next_batch() for s in alone]
        assert {"pixel_values" in b for b in own} == {True, False}  # alone, they would differ
        assert own[0]["input_ids"].shape != own[1]["input_ids"].shape
        assert set(slices[0]) == set(slices[1]) and "pixel_values" in slices[0]
        for k in slices[0]:
            assert slices[0][k].shape == slices[1][k].shape, k
        together = {k: np.concatenate([slices[0][k], slices[1][k]], axis=1 if k == "positions" else 0)
                    for k in slices[0]}
        one = whole.next_batch()
        assert set(together) == set(one)
        for k in one:
            np.testing.assert_array_equal(together[k], one[k], err_msg=k)
    assert len(store.values) <= 2 * 2  # each host keeps its keys of the last two batches only
