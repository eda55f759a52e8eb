"""Data: preprocessing parity with transformers, the synthetic task, the packed-batch stream (buckets, resume,
bad input)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image
from transformers import Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from bard_jax.data import DataError, Processor
from bard_jax.data.image import ImageSettings, process_images
from bard_jax.data.pipeline import PipelineConfig, TrainStream, read_jsonl
from bard_jax.data.synthetic import generate


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return str(generate(str(tmp_path_factory.mktemp("syn")), n=120, seed=3, n_eval=20))


def hf_image_processor(s: ImageSettings) -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(patch_size=s.patch_size, temporal_patch_size=s.temporal_patch_size,
                                    merge_size=s.merge_size, image_mean=list(s.image_mean),
                                    image_std=list(s.image_std), min_pixels=s.min_pixels, max_pixels=s.max_pixels)


def test_image_parity_with_transformers_including_clamping():
    s = ImageSettings(min_pixels=128 * 128, max_pixels=320 * 320)
    hfp = hf_image_processor(s)
    rng = np.random.default_rng(0)
    sizes = [(int(rng.integers(8, 900)), int(rng.integers(8, 900))) for _ in range(20)]
    sizes += [(20, 30), (40, 700), (900, 850), (33, 33), (1000, 12)]  # below min, skewed, above max
    clamped = {"up": 0, "down": 0}
    for h, w in sizes:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ref = hfp(images=[img], return_tensors="np")
        pv, grid = process_images([img], s)
        np.testing.assert_array_equal(grid, ref["image_grid_thw"])
        assert np.abs(pv - ref["pixel_values"]).max() <= 1e-5, (h, w)
        area = round(h / 32) * 32 * round(w / 32) * 32
        clamped["up" if area < s.min_pixels else "down" if area > s.max_pixels else "none"] = 1
    assert clamped["up"] and clamped["down"]


def hf_processor(proc: Processor) -> Qwen3VLProcessor:
    """transformers' Qwen3-VL processor around the same tokenizer and image settings (built without its video
    processor, which needs torchvision: only its image path is exercised)."""
    hp = object.__new__(Qwen3VLProcessor)
    hp.image_processor, hp.tokenizer, hp.video_processor = hf_image_processor(proc.settings), proc.tokenizer, None
    hp.chat_template = proc.tokenizer.chat_template
    for name, tok in (("image", "<|image_pad|>"), ("video", "<|video_pad|>"), ("vision_start", "<|vision_start|>"),
                      ("vision_end", "<|vision_end|>")):
        setattr(hp, f"{name}_token", tok)
        setattr(hp, f"{name}_token_id", proc.tokenizer.convert_tokens_to_ids(tok))
    return hp


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_token_ids_match_transformers_processor(synthetic, n_images):
    proc = Processor.from_pretrained(synthetic)
    hp = hf_processor(proc)
    rng = np.random.default_rng(n_images)
    images = [Image.fromarray(rng.integers(0, 256, (int(rng.integers(40, 140)), int(rng.integers(40, 140)), 3),
                                           dtype=np.uint8)) for _ in range(n_images)]
    content = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": "where is the 3 ?"}]
    messages = [{"role": "user", "content": content}, {"role": "assistant", "content": "top left"},
                {"role": "user", "content": "what color is the circle ?"}]
    text = proc.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ref = hp(text=[text], images=images or None, return_tensors="np")
    ours = proc.encode_chat(messages)
    np.testing.assert_array_equal(ours["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(ours["mm_token_type_ids"], ref["mm_token_type_ids"])
    if n_images:
        np.testing.assert_array_equal(ours["image_grid_thw"], ref["image_grid_thw"])
        assert np.abs(ours["pixel_values"] - ref["pixel_values"]).max() <= 1e-5


def test_training_split_is_the_last_assistant_turn(synthetic):
    proc = Processor.from_pretrained(synthetic)
    messages = [{"role": "user", "content": "where is the 3 ?"}, {"role": "assistant", "content": "top left"},
                {"role": "user", "content": "what color is the circle ?"},
                {"role": "assistant", "content": "\n\nred"}]
    enc = proc.encode_training_sample(messages)
    tok = proc.tokenizer
    assert tok.convert_ids_to_tokens(enc["response_ids"].tolist()) == ["red", "<|im_end|>"]
    assert tok.convert_ids_to_tokens(enc["prefix_ids"][-3:].tolist()) == ["<|im_start|>", "assistant", "\n"]
    assert "top" in tok.convert_ids_to_tokens(enc["prefix_ids"].tolist())  # earlier turns are conditioning
    with pytest.raises(DataError, match="no assistant turn"):
        proc.encode_training_sample(messages[:1])


def digest(path):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            h.update(f.encode())
            h.update(open(os.path.join(root, f), "rb").read())
    return h.hexdigest()


def test_synthetic_generator_is_deterministic(tmp_path):
    a = generate(str(tmp_path / "a"), n=15, seed=7, n_eval=5)
    b = generate(str(tmp_path / "b"), n=15, seed=7, n_eval=5)
    c = generate(str(tmp_path / "c"), n=15, seed=8, n_eval=5)
    assert digest(a) == digest(b) != digest(c)
    train = [json.loads(x)["messages"][0]["content"][1]["text"] for x in open(os.path.join(a, "train.jsonl"))]
    assert all(isinstance(t, str) and t for t in train)
    answers = [json.loads(x)["meta"]["answer"] for x in open(os.path.join(a, "eval.jsonl"))]
    assert len(answers) == 5


def test_synthetic_digits_are_ten_distinct_glyphs_inside_every_shape():
    from PIL import ImageDraw

    from bard_jax.data.synthetic import CELL, COLORS, COLS, ROWS, SHAPES, digit_corner, draw_digit, draw_scene

    def glyph(digit):
        img = Image.new("RGB", (12, 17), (0, 0, 0))
        draw_digit(ImageDraw.Draw(img), 2, 2, digit)
        return np.asarray(img)[..., 0] > 0

    glyphs = [glyph(k) for k in range(10)]
    assert len({g.tobytes() for g in glyphs}) == 10
    # Seven-segment reading: 8 lights a superset of every digit; 1 is the right-hand column only.
    assert all((g <= glyphs[8]).all() for g in glyphs)
    lit_cols = np.nonzero(glyphs[1].any(axis=0))[0]
    assert lit_cols.tolist() == [8, 9] and glyphs[1][2:15, 8:10].all()
    # In generated scenes each digit sits wholly on its shape: the ring of pixels around the glyph is shape colour.
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        img, objects = draw_scene(rng)
        px = np.asarray(img).astype(int)
        for o in objects:
            seen.add(o["shape"])
            r, c = ROWS.index(o["row"]), COLS[img.width // CELL].index(o["col"])
            x0, y0 = digit_corner(o["shape"], c * CELL + 3, r * CELL + 3)
            ring = np.concatenate([px[y0 - 1, x0 - 1:x0 + 9], px[y0 + 13, x0 - 1:x0 + 9],
                                   px[y0 - 1:y0 + 14, x0 - 1], px[y0 - 1:y0 + 14, x0 + 8]])
            assert (np.abs(ring - np.asarray(COLORS[o["color"]])).max(axis=1) <= 1).all(), o
            white = px[y0:y0 + 13, x0:x0 + 8].min(axis=-1) == 255
            assert (white == glyph(o["number"])[2:15, 2:10]).all(), o
    assert seen == set(SHAPES)


def stream(synthetic, **kw):
    proc = Processor.from_pretrained(synthetic)
    records, skipped = read_jsonl(os.path.join(synthetic, "train.jsonl"))
    cfg = PipelineConfig(global_batch_size=8, block_size=4, length_buckets=(64, 128, 256), pixel_rows=32,
                         max_images=1, seed=1, **kw)
    return TrainStream(records, proc, cfg, image_root=synthetic, skipped=skipped)


def test_stream_resumes_exactly_and_keeps_few_shapes(synthetic):
    s = stream(synthetic)
    for _ in range(3):
        s.next_batch()
    state = json.loads(json.dumps(s.get_state()))
    expected = [s.next_batch() for _ in range(3)]
    resumed = stream(synthetic)
    resumed.set_state(state)
    for want in expected:
        got = resumed.next_batch()
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    shapes = set()
    full = stream(synthetic)
    for _ in range(15):  # one epoch of 120 samples
        b = full.next_batch()
        shapes.add(tuple(b["input_ids"].shape) + tuple(b["noisy_index"].shape))
    assert len(shapes) <= 4, shapes


def test_hosts_take_disjoint_slices_of_the_same_global_batch(synthetic):
    whole = stream(synthetic).next_batch()["example_index"]
    parts = [stream(synthetic, shard_index=i, shard_count=2).next_batch()["example_index"] for i in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_bad_samples_are_skipped_and_counted_or_raise_in_strict_mode(synthetic, tmp_path):
    lines = open(os.path.join(synthetic, "train.jsonl")).read().splitlines()[:6]
    broken = json.loads(lines[1])
    broken["messages"][0]["content"][0]["image"] = "images/missing.png"
    no_assistant = json.loads(lines[2])
    no_assistant["messages"] = no_assistant["messages"][:1]
    odd = json.loads(lines[3])
    odd["messages"][0]["content"].append({"type": "audio", "audio": "x.wav"})
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], json.dumps(broken), json.dumps(no_assistant), json.dumps(odd), "{oops",
                              lines[4], lines[5]]) + "\n")
    proc = Processor.from_pretrained(synthetic)
    records, skipped = read_jsonl(str(bad))
    assert skipped["malformed json"] == 1 and len(records) == 6
    s = TrainStream(records, proc, PipelineConfig(global_batch_size=6, block_size=4, length_buckets=(256,),
                                                  pixel_rows=32, max_images=1), image_root=synthetic,
                    skipped=skipped)
    batch = s.next_batch()
    assert batch["input_ids"].shape[0] == 6  # replaced by later stream positions: the batch stays full
    counts = s.get_state()["skipped"]
    assert counts["unreadable image"] >= 1 and counts["sample has no assistant turn"] >= 1
    assert counts["unknown content type 'audio'"] >= 1
    with pytest.raises(DataError, match=r"bad\.jsonl:5: malformed sample"):
        read_jsonl(str(bad), strict=True)
    strict = TrainStream(records, proc, PipelineConfig(global_batch_size=6, block_size=4, length_buckets=(256,),
                                                       pixel_rows=32, max_images=1, strict=True),
                         image_root=synthetic)
    with pytest.raises(DataError, match=r"bad\.jsonl:\d+: "):
        strict.next_batch()


@pytest.mark.slow  # suite time; the worker path also runs in test_data_failures
def test_two_workers_give_the_same_batches_and_resume(synthetic):
    proc_dir = os.path.join(synthetic, "tokenizer")
    plain = stream(synthetic)
    want = [plain.next_batch() for _ in range(4)]
    proc = Processor.from_pretrained(synthetic)
    records, _ = read_jsonl(os.path.join(synthetic, "train.jsonl"))
    cfg = PipelineConfig(global_batch_size=8, block_size=4, length_buckets=(64, 128, 256), pixel_rows=32,
                         max_images=1, seed=1, workers=2)
    workers = TrainStream(records, proc, cfg, image_root=synthetic, processor_dir=proc_dir)
    try:
        got = [workers.next_batch() for _ in range(2)]
        state = workers.get_state()
    finally:
        workers.close()
    resumed = TrainStream(records, proc, cfg, image_root=synthetic, processor_dir=proc_dir)
    resumed.set_state(state)
    try:
        got += [resumed.next_batch() for _ in range(2)]
    finally:
        resumed.close()
    for w, g in zip(want, got):
        for k in w:
            np.testing.assert_array_equal(g[k], w[k], err_msg=k)


def test_prefetching_gives_the_same_batches_state_and_errors(synthetic):
    from bard_jax.data.prefetch import Prefetcher

    plain = stream(synthetic)
    want = [plain.next_batch() for _ in range(5)]
    states = []
    ahead = Prefetcher(stream(synthetic), depth=2)
    got = []
    for _ in range(3):
        got.append(ahead.next_batch())
        states.append(ahead.get_state())
    assert states[-1]["batch_number"] == 3  # the state of what was handed out, not of what was prepared
    concurrent.futures.wait(ahead._pending)
    assert ahead.stream.get_state()["batch_number"] == 5  # two prepared ahead
    ahead.close()
    resumed = Prefetcher(stream(synthetic), depth=1)
    resumed.set_state(json.loads(json.dumps(states[-1])))
    got += [resumed.next_batch() for _ in range(2)]
    resumed.set_state(states[0])  # a rewind drops what was prepared ahead
    assert resumed.get_state()["batch_number"] == 1
    got_again = resumed.next_batch()
    resumed.close()
    for w, g in zip(want + [want[1]], got + [got_again]):
        assert sorted(g) == sorted(w)
        for k in w:
            np.testing.assert_array_equal(g[k], w[k], err_msg=k)

    class Failing:
        def __init__(self):
            self.n = 0

        def next_batch(self):
            self.n += 1
            if self.n == 2:
                raise DataError("sample 9: broken")
            return {"n": self.n}

        def get_state(self):
            return {"n": self.n}

        def set_state(self, state):
            self.n = state["n"]

        def close(self):
            pass

    failing = Prefetcher(Failing(), depth=2)
    assert failing.next_batch() == {"n": 1}
    with pytest.raises(DataError, match="sample 9: broken"):
        failing.next_batch()
    failing.close()
    assert failing.stream.n == 2  # nothing was prepared after the failure: the stream is as it left it
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(Failing(), depth=0)


def hf_video_processor(proc: Processor):
    """transformers' Qwen3-VL video processor with the processor's settings. Its pixel path needs torchvision
    (not installable next to the CPU torch), so tests use its frame sampling, resize rule and patch layout."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    v = proc.video_settings
    return Qwen3VLVideoProcessor(size={"shortest_edge": v.min_pixels, "longest_edge": v.max_pixels}, fps=v.fps,
                                 min_frames=v.min_frames, max_frames=v.max_frames,
                                 patch_size=proc.settings.patch_size, merge_size=proc.settings.merge_size,
                                 temporal_patch_size=proc.settings.temporal_patch_size)


def test_video_frames_match_transformers_sampling_resize_layout_and_times(synthetic):
    torch = pytest.importorskip("torch", reason="transformers' video processor runs on torch (the test extras)")
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as hf_video_resize
    from transformers.video_utils import VideoMetadata

    proc = Processor.from_pretrained(synthetic)
    s, hv = proc.settings, hf_video_processor(proc)
    rng = np.random.default_rng(7)
    # (frames, height, width, native fps): few frames (min_frames clamp), odd counts (last patch padded), long
    # clips (fps sampling and max_frames), tiny frames (scaled up), large frames (max_pixels clamp).
    clips = [(3, 40, 60, 24.0), (5, 64, 96, 2.0), (9, 50, 50, 4.0), (40, 100, 80, 10.0), (200, 30, 140, 25.0),
             (6, 20, 20, 3.0), (7, 300, 200, 30.0)]
    for f, h, w, fps in clips:
        frames = rng.integers(0, 256, (f, h, w, 3), dtype=np.uint8)
        pv, grid, times = proc.process_videos([frames], fps=fps)
        keep = hv.sample_frames(VideoMetadata(total_num_frames=f, fps=fps))
        rh, rw = hf_video_resize(len(keep), h, w, temporal_factor=s.temporal_patch_size, factor=s.factor,
                                 min_pixels=hv.size.shortest_edge, max_pixels=hv.size.longest_edge)
        # Reference pixels: PIL bicubic per sampled frame (our documented resize), then transformers' patchify.
        norm = np.stack([(np.asarray(Image.fromarray(frames[i]).resize((rw, rh), Image.Resampling.BICUBIC),
                                     np.float32) / 255 - 0.5) / 0.5 for i in keep]).transpose(0, 3, 1, 2)
        ref, gt, gh, gw = hv.patchify(torch.from_numpy(norm)[None], patch_size=s.patch_size,
                                      merge_size=s.merge_size, temporal_patch_size=s.temporal_patch_size)
        np.testing.assert_array_equal(grid, [[gt, gh, gw]])
        assert np.abs(pv - ref[0].numpy()).max() <= 1e-5, (f, h, w)
        ref_times = Qwen3VLProcessor._calculate_timestamps(None, list(keep), fps, s.temporal_patch_size)
        np.testing.assert_allclose(times[0], ref_times, rtol=0, atol=1e-12)


def test_video_token_ids_match_transformers_processor(synthetic):
    """transformers' processor expands the video placeholder from the grid and frame metadata its own video
    processor would produce (sampling and resize rule computed by transformers; pixels not compared here)."""
    pytest.importorskip("torch", reason="transformers' video processor module imports torch (the test extras)")
    import transformers
    from packaging.version import Version
    from transformers.feature_extraction_utils import BatchFeature
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as hf_video_resize
    from transformers.video_utils import VideoMetadata

    if Version("5.0") <= Version(transformers.__version__) < Version("5.25"):
        pytest.skip(f"transformers {transformers.__version__} wraps a video's frames twice (it keeps the template's "
                    f"vision start/end around them); 4.57, the release's, and 5.25 do not")

    proc = Processor.from_pretrained(synthetic)
    s, hv = proc.settings, hf_video_processor(proc)
    fps = {0: 6.0, 1: 24.0}

    class GridOnly(type(hv)):
        def __call__(self, videos, **kwargs):
            grids, metas = [], []
            for i, v in enumerate(videos):
                meta = VideoMetadata(total_num_frames=len(v), fps=fps[i])
                meta.frames_indices = hv.sample_frames(meta)
                n = len(meta.frames_indices)
                rh, rw = hf_video_resize(n, v.shape[1], v.shape[2], temporal_factor=2, factor=s.factor,
                                         min_pixels=hv.size.shortest_edge, max_pixels=hv.size.longest_edge)
                grids.append([-(-n // 2), rh // s.patch_size, rw // s.patch_size])
                metas.append(meta)
            return BatchFeature({"video_grid_thw": np.asarray(grids), "video_metadata": metas})

    hp = hf_processor(proc)
    hp.video_processor = object.__new__(GridOnly)
    hp.video_processor.__dict__.update(hv.__dict__)
    rng = np.random.default_rng(1)
    videos = [rng.integers(0, 256, (11, 70, 90, 3), dtype=np.uint8), rng.integers(0, 256, (30, 50, 64, 3),
                                                                                  dtype=np.uint8)]
    image = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "video", "video": videos[0], "fps": fps[0]},
                                             {"type": "image", "image": image},
                                             {"type": "text", "text": "what moves ?"},
                                             {"type": "video", "video": videos[1]}]}]
    text = proc.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ref = hp(text=[text], images=[image], videos=videos, return_tensors="np")
    ours = proc.encode_chat(messages)
    np.testing.assert_array_equal(ours["video_grid_thw"], ref["video_grid_thw"])
    np.testing.assert_array_equal(ours["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(ours["mm_token_type_ids"], ref["mm_token_type_ids"])
    assert (ours["mm_token_type_ids"] == 2).sum() == (ours["video_grid_thw"].prod(-1) // 4).sum()


def test_video_file_decoding_and_bad_videos(synthetic, tmp_path):
    av = pytest.importorskip("av")  # the `video` extra; installed with the test extras
    proc = Processor.from_pretrained(synthetic)
    path = str(tmp_path / "clip.mp4")
    with av.open(path, "w") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(16):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    messages = [{"role": "user", "content": [{"type": "video", "video": "clip.mp4"}]}]
    enc = proc.encode_chat(messages, image_root=str(tmp_path))
    # 16 frames at 8 fps = 2 s -> 4 sampled frames (2 per second, at least min_frames) -> 2 temporal patches.
    assert enc["video_grid_thw"][0, 0] == 2
    text = proc.tokenizer.decode(enc["input_ids"][0])
    assert text.count("<|video_pad|>") == enc["video_grid_thw"].prod() // 4

    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(DataError, match="broken.mp4"):
        proc.encode_chat([{"role": "user", "content": [{"type": "video", "video": "broken.mp4"}]}],
                         image_root=str(tmp_path))
    with pytest.raises(DataError, match="frames"):
        proc.encode_chat([{"role": "user", "content": [{"type": "video", "video": []}]}])


@pytest.mark.slow  # suite time; worker start-up and resume are covered by the two-worker test
def test_worker_failures_surface_in_the_main_process(synthetic, tmp_path):
    """A strict-mode error raised inside a worker reaches the caller with the file and line; a worker that cannot
    start (its processor directory vanished) gives a clear error instead of a hang."""
    import shutil

    lines = open(os.path.join(synthetic, "train.jsonl")).read().splitlines()[:8]
    broken = json.loads(lines[2])
    broken["messages"][0]["content"][0]["image"] = "images/missing.png"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:2] + [json.dumps(broken)] + lines[3:]) + "\n")
    proc = Processor.from_pretrained(synthetic)
    records, _ = read_jsonl(str(bad))
    cfg = PipelineConfig(global_batch_size=8, block_size=4, length_buckets=(256,), pixel_rows=32, max_images=1,
                         strict=True, workers=2)
    s = TrainStream(records, proc, cfg, image_root=synthetic, processor_dir=os.path.join(synthetic, "tokenizer"))
    try:
        with pytest.raises(DataError, match=r"bad\.jsonl:3: image .*missing\.png cannot be read"):
            s.next_batch()
    finally:
        s.close()

    gone = tmp_path / "gone"
    shutil.copytree(os.path.join(synthetic, "tokenizer"), gone)
    records, _ = read_jsonl(os.path.join(synthetic, "train.jsonl"))
    s = TrainStream(records, proc, dataclasses.replace(cfg, strict=False), image_root=synthetic,
                    processor_dir=str(gone))
    shutil.rmtree(gone)  # workers spawn on first use and fail to load the processor
    try:
        with pytest.raises(DataError, match="data worker process died"):
            s.next_batch()
    finally:
        s.close()
