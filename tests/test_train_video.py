"""Samples with videos train: the stream keeps a video's pixels and grids, a batch with a video carries
`pixel_values_videos` [B, Q, C] / `video_grid_thw` [B, J, 3], its MRoPE positions and vision groups are the
samplers', the losses (student and teacher) run the tower on them, samples beyond the limits are skipped with a
counted reason, and a run resumed from a checkpoint equals the uninterrupted one.

Data: the synthetic task's scenes, as images, as videos of four shifted frames (image files, or an mp4 written with
PyAV), one sample with an image and a video, and text only."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from bard_jax.data.pipeline import PipelineConfig, TrainStream
from bard_jax.data.processor import Processor
from bard_jax.diffusion import losses as losses_lib
from bard_jax.model.example_vision import example_positions, per_example_vision, split_by_example
from bard_jax.model.hidden import encode_vision
from bard_jax.model.vlm import Qwen3VL
from bard_jax.modeling import init_params, network
from bard_jax.sharding import make_mesh
from bard_jax.train import setup
from bard_jax.train.config import DataSection, ModelSection, ObjectiveSection, TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKETS = dict(length_buckets=(128,), response_buckets=(64,), pixel_rows=64, patch_buckets=(64,))


# ------------------------------------------------------------------------------------------------ the data
def frames_of(root: str, image: str, name: str) -> list[str]:
    """Four frames of a scene shifted 8 pixels each (image files next to it); their paths relative to `root`."""
    scene = np.asarray(Image.open(os.path.join(root, image)).convert("RGB"))
    paths = []
    for k in range(4):
        path = f"images/{name}_{k}.png"
        Image.fromarray(np.roll(scene, 8 * k, axis=1)).save(os.path.join(root, path))
        paths.append(path)
    return paths


def write_mp4(path: str, scene: np.ndarray) -> None:
    """Four frames at 2 fps: the processor samples all four (two temporal patches)."""
    import av

    with av.open(path, "w") as out:
        stream = out.add_stream("mpeg4", rate=2)
        stream.width, stream.height, stream.pix_fmt = scene.shape[1], scene.shape[0], "yuv420p"
        for k in range(4):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.roll(scene, 8 * k, axis=1), format="rgb24")))
        out.mux(stream.encode())


def with_visual(record: dict, parts: list[dict]) -> dict:
    """The record with its user turn's image part replaced by `parts`."""
    user, answer = record["messages"]
    content = parts + [p for p in user["content"] if p["type"] == "text"]
    return {"messages": [dict(user, content=content), answer], "meta": record["meta"]}


@pytest.fixture(scope="module")
def video_data(tmp_path_factory) -> str:
    """DIR with tokenizer/, images/ and mixed.jsonl: per four samples an image, a video of frame files, an image
    and a video together, and text only; sample 5 is an mp4."""
    from bard_jax.data import synthetic

    root = synthetic.generate(str(tmp_path_factory.mktemp("video") / "syn"), 16, 0, 2)
    records = [json.loads(line) for line in open(os.path.join(root, "train.jsonl"))]
    out = []
    for i, rec in enumerate(records):
        image = next(p["image"] for p in rec["messages"][0]["content"] if p["type"] == "image")
        video = {"type": "video", "video": frames_of(root, image, f"clip{i}"), "fps": 2}
        if i == 5:
            write_mp4(os.path.join(root, "clip5.mp4"), np.asarray(Image.open(os.path.join(root, image))))
            video = {"type": "video", "video": "clip5.mp4"}
        out.append(with_visual(rec, [[{"type": "image", "image": image}], [video],
                                     [{"type": "image", "image": image}, video], []][i % 4]))
    with open(os.path.join(root, "mixed.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in out)
    return root


def records(root: str) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(root, "mixed.jsonl"))]


def stream(root: str, **kw) -> TrainStream:
    cfg = PipelineConfig(**{**dict(global_batch_size=4, block_size=4, max_images=1, seed=0, **BUCKETS), **kw})
    return TrainStream(records(root), Processor.from_pretrained(os.path.join(root, "tokenizer")), cfg, root)


def model_config(proc: Processor):
    return setup.model_config_for(TrainConfig(model=ModelSection(preset="tiny")), proc)


@pytest.fixture(scope="module")
def tiny(video_data):
    """(config, params): the tiny preset with the synthetic tokenizer's ids and one text layer and one vision block
    (less to compile), random weights (initialised under jit: one compilation instead of hundreds of eager ones)."""
    c = model_config(Processor.from_pretrained(os.path.join(video_data, "tokenizer")))
    c = c.replace(text=dataclasses.replace(c.text, num_hidden_layers=1), vision=dataclasses.replace(c.vision, depth=1))
    return c, jax.jit(lambda key: init_params(c, key))(jax.random.key(0))


def examples(s: TrainStream, indices) -> list[dict]:
    out = []
    for i in indices:
        sample, problem = s.attempt(i, i)
        assert problem is None, problem
        out.append(sample)
    return out


# ------------------------------------------------------------------------------------------------ the batch
def test_video_batch_shapes_grids_positions_and_vision_groups_are_the_samplers(video_data, tiny):
    """A batch of [image, video (frames), image + video, mp4 video]: the video arrays' shapes and grid rows; each
    row's prefix positions equal `example_positions` (the samplers') over the same prompt; and the tower's windows
    put at the prefix's pad tokens equal those of the samplers' grouping of the prompt (`split_by_example`)."""
    s = stream(video_data)
    proc = s.proc
    c, params = tiny
    recs = records(video_data)
    rows = [0, 1, 2, 5]
    batch = s.collate(examples(s, rows))
    prompts = [proc.encode_chat(recs[i]["messages"][:1], image_root=video_data) for i in rows]  # a sampler's inputs
    grids = [p.get("video_grid_thw", np.zeros((0, 3), np.int64)) for p in prompts]
    assert [len(g) for g in grids] == [0, 1, 1, 1]
    assert batch["pixel_values_videos"].shape == (4, 64, s.patch_dim)  # the one patch bucket
    assert batch["video_grid_thw"].shape == (4, 1, 3) and batch["image_grid_thw"].shape == (4, 1, 3)
    for b, g in enumerate(grids):
        np.testing.assert_array_equal(batch["video_grid_thw"][b, : len(g)], g)
        assert not batch["video_grid_thw"][b, len(g):].any()
        n = int(np.prod(g, axis=1).sum())
        assert (n == 0 or batch["pixel_values_videos"][b, :n].any()) and not batch["pixel_values_videos"][b, n:].any()
    assert (batch["video_grid_thw"][1:, 0, 0] == 2).all()  # four frames: two temporal patches, two timestamps

    # The samplers' inputs for the four prompts: right-padded ids, pixels concatenated over the batch (as
    # transformers' processor gives them), regrouped per example on the host as `sampler.inputs.prepare` does.
    width = max(p["input_ids"].shape[1] for p in prompts)
    ids = np.zeros((4, width), np.int32)
    mask = np.zeros((4, width), bool)
    for b, p in enumerate(prompts):
        n = p["input_ids"].shape[1]
        ids[b, :n], mask[b, :n] = p["input_ids"][0], True
        assert n == batch["prefix_len"][b]
        np.testing.assert_array_equal(ids[b, :n], batch["input_ids"][b, :n])
        assert (ids[b] == c.video_token_id).sum() == int(np.prod(grids[b], axis=1).sum()) // 4  # a pad per window
    cat = {k: np.concatenate([p[k] for p in prompts if k in p]) for k in
           ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")}
    vision = split_by_example(c, ids, mask, **cat)
    positions, _ = jax.jit(functools.partial(example_positions, c))(ids, mask, vision.image_grid, vision.video_grid)
    for b in range(4):
        n = int(mask[b].sum())
        np.testing.assert_array_equal(np.asarray(positions)[:, b, :n], batch["positions"][:, b, :n])

    net = network(c)

    @jax.jit
    def embedded(params, ids, image_pixels, image_grid, video_pixels, video_grid):
        """What the vision windows make of the ids' embeddings: x [B, T, D] and deepstack [J, B, T, D]."""
        groups = per_example_vision(c, image_pixels, image_grid, ids, video_pixels, video_grid)
        encoded = encode_vision(net, {"params": params}, groups.pixels, groups.meta)
        return net.apply({"params": params}, ids, encoded, groups.windows, method=Qwen3VL.embed)

    x_train, deep_train = embedded(params, batch["input_ids"], batch["pixel_values"], batch["image_grid_thw"],
                                   batch["pixel_values_videos"], batch["video_grid_thw"])
    x, deep = embedded(params, ids, *vision)
    for b in range(4):
        n = int(mask[b].sum())
        np.testing.assert_allclose(np.asarray(x[b, :n]), np.asarray(x_train[b, :n]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(deep[:, b, :n]), np.asarray(deep_train[:, b, :n]), rtol=1e-5, atol=1e-6)


def test_batches_without_videos_carry_no_video_arrays(video_data):
    s = stream(video_data)
    images_and_text = s.collate(examples(s, [0, 3, 4, 7]))
    assert "pixel_values" in images_and_text and not {"pixel_values_videos", "video_grid_thw"} & set(images_and_text)
    videos_only = s.collate(examples(s, [1, 3, 9, 11]))
    assert "pixel_values_videos" in videos_only and "pixel_values" not in videos_only


def test_a_video_beyond_the_limits_is_skipped_with_a_counted_reason(video_data):
    """48 video rows of a 64 x 96 scene over a 32-row limit; any video with max_videos 0. The stream goes on with
    the samples that fit and counts the others."""
    s = stream(video_data, pixel_rows=32, patch_buckets=(), max_videos=1)
    big = [i for i in range(16) if i % 4 in (1, 2) and s.attempt(i, i)[0] is None]
    assert big, "the data must hold a video over 32 rows"
    assert re.fullmatch(r"1 videos / 48 video pixel rows exceed the static limits \(max_videos 1 / 32 pixel rows\)",
                        s.attempt(big[0], 0)[1])
    none = stream(video_data, max_videos=0)
    assert re.match(r"1 videos / \d+ video pixel rows exceed the static limits \(max_videos 0 ", none.attempt(1, 0)[1])
    batches = [none.next_batch() for _ in range(3)]
    assert not any("pixel_values_videos" in batch for batch in batches)
    skipped = none.get_state()["skipped"]
    reason = "N videos / N video pixel rows exceed the static limits"
    assert set(skipped) == {reason} and skipped[reason] >= 1, skipped


def test_stream_resumes_the_same_video_batches(video_data):
    """The data side of an exact resume: the state (batch number, skip counts) gives the same batches again."""
    a = stream(video_data, max_videos=1, pixel_rows=32, patch_buckets=())  # some videos skipped: counts matter
    for _ in range(2):
        a.next_batch()
    state = a.get_state()
    later = [a.next_batch() for _ in range(2)]
    b = stream(video_data, max_videos=1, pixel_rows=32, patch_buckets=())
    b.set_state(state)
    for want in later:
        got = b.next_batch()
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    assert b.get_state() == a.get_state()


def test_the_step_plan_holds_video_batches_split_over_the_batch_axes(video_data, tiny):
    """The batch schema (what the dry run compiles) has the video keys at the stream's limits (from the processor's
    max_pixels: one image of 128 x 128 pixels is 64 rows), a collated video batch passes the loop's schema check, and
    its video arrays are split over the mesh's batch axes like pixel_values. With data.max_videos 0 the schema has no
    video keys (and such samples are skipped)."""
    c, _ = tiny
    cfg = TrainConfig(model=ModelSection(preset="tiny"), data=DataSection(
        processor=os.path.join(video_data, "tokenizer"), global_batch_size=4, micro_batch_size=2,
        length_buckets=(128,), response_buckets=(64,), patch_buckets=(16,), max_images=1),
        objective=ObjectiveSection(kind="pbm", block_size=4))
    obj = setup.objective_config(cfg, c.text.vocab_size, 3, 4)
    plan = setup.plan_step(cfg, c, None, obj, make_mesh((2, 1, 1), jax.devices()[:2]))
    patch_dim = c.vision.patch_dim
    assert plan.batch["pixel_values_videos"].shape == (4, 64, patch_dim)
    assert plan.batch["video_grid_thw"].shape == (4, 1, 3)
    s = TrainStream(records(video_data), Processor.from_pretrained(os.path.join(video_data, "tokenizer")),
                    setup.pipeline_config(cfg, obj), video_data)
    batch = s.next_batch()
    assert "pixel_values_videos" in batch
    device = plan.device_batch(batch)  # checks the batch against the schema first
    for k in ("pixel_values", "pixel_values_videos", "video_grid_thw"):
        assert device[k].sharding == plan.batch_sharding(k) == plan.batch_sharding("input_ids"), k
        assert device[k].shape == (2, 2) + batch[k].shape[1:]  # [A, G/A, ...]
    no_videos = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_videos=0))
    assert not {"pixel_values_videos", "video_grid_thw"} & set(setup.largest_batch(no_videos, obj, patch_dim))


# ------------------------------------------------------------------------------------------------ the losses
# Suite time: pbm runs under -m slow; swd runs the student's and the teacher's forward.
@pytest.mark.parametrize("kind", [pytest.param("pbm", marks=pytest.mark.slow), "swd"])
def test_loss_and_vision_gradients_of_a_video_batch_are_finite_and_non_zero(video_data, tiny, kind, monkeypatch):
    """Through the train step's own loss (`setup.make_loss`); the student's and SWD's teacher's forward both get
    the video arrays."""
    s = stream(video_data)
    c, params = tiny
    batch = s.collate(examples(s, [1, 5, 9, 13]))  # videos only: the tower's gradient comes from them alone
    assert "pixel_values" not in batch
    cfg = TrainConfig(model=ModelSection(preset="tiny", compute_dtype="float32"),
                      objective=ObjectiveSection(kind=kind, block_size=4, teacher_block_size=2),
                      data=DataSection(max_images=1))
    obj = setup.objective_config(cfg, c.text.vocab_size, s.proc.tokenizer.convert_tokens_to_ids("<|mask|>"), s.pad_id)
    teacher = jax.tree_util.tree_map(lambda x: x * 1.01, params) if kind == "swd" else None
    loss = setup.make_loss(cfg, c, c if kind == "swd" else None, obj)
    seen = []  # per forward: the video pixel rows its vision groups were built from

    def recording(config, pixels, grid, ids, video_pixels=None, video_grid=None):
        seen.append(None if video_pixels is None else video_pixels.shape)
        return per_example_vision(config, pixels, grid, ids, video_pixels, video_grid)

    monkeypatch.setattr(losses_lib, "per_example_vision", recording)
    grad_fn = jax.jit(jax.value_and_grad(lambda p, b, t: loss(p, b, t, 4), has_aux=True))
    (value, _), grads = grad_fn(params, {k: jnp.asarray(v) for k, v in batch.items()}, teacher)
    assert seen == [batch["pixel_values_videos"].shape] * (2 if kind == "swd" else 1)
    assert np.isfinite(float(value))
    tower = jax.tree_util.tree_leaves(grads["visual"]["blocks"])
    assert all(np.isfinite(np.asarray(g)).all() for g in tower)
    assert max(float(jnp.abs(g).max()) for g in tower) > 0
    assert float(jnp.abs(grads["visual"]["patch_embed"]["proj"]["kernel"]).max()) > 0  # the pixels themselves


# ------------------------------------------------------------------------------------------------ a run
def train(workdir, data, *overrides, check=True):
    cmd = [sys.executable, "-m", "bard_jax.train", "--recipe", os.path.join(REPO, "recipes", "demo.py"),
           "--workdir", str(workdir), "--recipe.data.train_jsonl", os.path.join(data, "mixed.jsonl"),
           "--recipe.data.processor", os.path.join(data, "tokenizer"), "--recipe.data.image_root", data,
           "--recipe.data.global_batch_size", "4", "--recipe.data.micro_batch_size", "2",
           "--recipe.data.length_buckets", "128", "--recipe.data.response_buckets", "64",
           "--recipe.data.patch_buckets", "64", "--recipe.data.max_videos", "1", "--recipe.log_every", "1",
           "--recipe.export_hf", "false", "--recipe.steps", "6", "--recipe.ckpt_every", "100", *overrides]
    env = {**os.environ, "XLA_FLAGS": "", "JAX_COMPILATION_CACHE_DIR": str(workdir.parent / "jax_cache")}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if check:
        assert r.returncode == 0, r.stderr[-4000:]
    return r


@pytest.mark.slow  # three training runs (~2 min on two cores)
def test_a_run_with_videos_trains_and_resumes_exactly(video_data, tmp_path):
    straight = tmp_path / "straight"
    train(straight, video_data)
    ls = [json.loads(line) for line in open(straight / "metrics.jsonl")]
    assert len(ls) == 6 and all(np.isfinite(row["loss"]) and row["grad_norm"] > 0 for row in ls), ls
    resumed = tmp_path / "resumed"
    r = train(resumed, video_data, "--recipe.stop_at_step", "3", check=False)
    assert r.returncode == 75, r.stderr[-4000:]
    train(resumed, video_data)
    assert [json.loads(line)["loss"] for line in open(resumed / "metrics.jsonl")] == [row["loss"] for row in ls]
    from bard_jax import hf

    a = hf.load_converted(str(straight / "export"), dtype=None)[0]
    b = hf.load_converted(str(resumed / "export"), dtype=None)[0]
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_max_videos_below_zero_is_refused(tmp_path):
    from bard_jax.train import loop
    from bard_jax.train.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"data.max_videos = -1: must be >= 0"):
        loop.main(["--recipe", os.path.join(REPO, "recipes", "demo.py"), "--workdir", str(tmp_path / "run"),
                   "--recipe.data.max_videos=-1"])
    assert not (tmp_path / "run").exists()
