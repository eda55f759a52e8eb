"""Qwen3-VL video preprocessing in numpy + PIL: frame sampling, timestamps, video smart resize, patchify.

A video reaches the model as temporal patches of two frames each: grid (t, h, w) with t = ceil(frames / 2) (the
last frame is repeated to fill the last patch). The prompt gives each temporal patch its own
`<{time:.1f} seconds><|vision_start|>pads<|vision_end|>` group, the time being the mean of the patch's first and
last source-frame times.

Frames come as a list of PIL images or an array [F, H, W, 3] uint8 with the video's native frame rate, or from a
video file decoded with PyAV (`pip install av`, the `video` extra). Resizing uses PIL bicubic like the image path;
transformers' video processor resizes with torchvision on tensors instead, whose antialiased bicubic differs from
PIL's by a few grey levels, so our pixels match its image path exactly but its video path only approximately.

Letters: F frames, C channels, T temporal patch (2), p patch size (16), m merge size (2).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from bard_jax.data.image import ImageSettings, load_frame, patchify
from bard_jax.errors import InputError

# Frame rate assumed for a bare frame list without one (what transformers assumes too).
DEFAULT_NATIVE_FPS = 24.0


@dataclasses.dataclass(frozen=True)
class VideoSettings:
    """Qwen3-VL video processor settings (transformers' `video_preprocessor_config.json`).

    min_pixels / max_pixels bound the pixels of the whole resized clip (frames x height x width)."""

    min_pixels: int = 128 * 32 * 32
    max_pixels: int = 768 * 32 * 32
    fps: float = 2.0  # frames sampled per second of video
    min_frames: int = 4
    max_frames: int = 768
    sample_frames: bool = True

    @classmethod
    def from_dict(cls, raw: dict, min_pixels: int | None = None, max_pixels: int | None = None) -> VideoSettings:
        size = raw.get("size") or {}
        return cls(
            min_pixels=int(min_pixels or raw.get("min_pixels") or size.get("shortest_edge") or cls.min_pixels),
            max_pixels=int(max_pixels or raw.get("max_pixels") or size.get("longest_edge") or cls.max_pixels),
            fps=float(raw.get("fps") or cls.fps),
            min_frames=int(raw.get("min_frames", cls.min_frames)),
            max_frames=int(raw.get("max_frames", cls.max_frames)),
            sample_frames=bool(raw.get("do_sample_frames", cls.sample_frames)),
        )


@dataclasses.dataclass(frozen=True)
class Video:
    """Decoded frames [F, H, W, 3] uint8, their native frame rate, and which source frames they are."""

    frames_fhwc: np.ndarray
    native_fps: float
    frame_indices: np.ndarray  # [F] indices into the source video (0..F-1 for an unsampled clip)


def as_video(frames: Any, native_fps: float | None = None) -> Video:
    """A list of PIL images or an array [F, H, W, 3] -> Video (all frames, indices 0..F-1)."""
    if isinstance(frames, np.ndarray):
        arr = frames
    else:
        arr = np.stack([np.asarray(f.convert("RGB")) for f in frames]) if len(frames) else np.zeros((0, 1, 1, 3))
    if arr.ndim != 4 or arr.shape[-1] != 3 or len(arr) == 0:
        raise InputError(f"a video needs frames [F, H, W, 3] with F >= 1, got shape {arr.shape}")
    return Video(arr.astype(np.uint8), float(native_fps or DEFAULT_NATIVE_FPS), np.arange(len(arr)))


def read_video(path: str) -> Video:
    """Decode every frame of a video file with PyAV; the frame rate from the stream."""
    try:
        import av
    except ImportError as e:
        raise InputError(f"reading video file {path} needs PyAV: pip install av (or the bard_jax[video] extra)") from e
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else None
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError, OSError) as e:
        raise InputError(f"video {path} cannot be decoded ({e})") from e
    return as_video(np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8), fps)


def sample_frame_indices(total_frames: int, native_fps: float, s: VideoSettings) -> np.ndarray:
    """`s.fps` frames per second of video, at least min_frames and at most max_frames (and the frames there
    are), spread evenly from the first frame to the last."""
    n = int(total_frames / native_fps * s.fps)
    n = min(max(n, s.min_frames), s.max_frames, total_frames)
    return np.linspace(0, total_frames - 1, n).round().astype(int)


def sample(video: Video, s: VideoSettings) -> Video:
    if not s.sample_frames:
        return video
    keep = sample_frame_indices(len(video.frames_fhwc), video.native_fps, s)
    return Video(video.frames_fhwc[keep], video.native_fps, video.frame_indices[keep])


def temporal_patch_times(frame_indices: Sequence[int], native_fps: float, temporal_patch: int) -> list[float]:
    """Seconds of each temporal patch: the mean of its first and last frame's time (a short last patch repeats
    the last frame)."""
    idx = [int(i) for i in frame_indices]
    idx += [idx[-1]] * (-len(idx) % temporal_patch)
    t = [i / native_fps for i in idx]
    return [(t[i] + t[i + temporal_patch - 1]) / 2 for i in range(0, len(t), temporal_patch)]


def video_smart_resize(frames: int, height: int, width: int, factor: int, temporal: int, min_pixels: int,
                       max_pixels: int) -> tuple[int, int]:
    """Target (h, w) for a clip: multiples of `factor` with frames x h x w within [min_pixels, max_pixels]."""
    if frames < temporal:
        raise InputError(f"a video needs at least {temporal} frames after sampling, got {frames}")
    if height < factor or width < factor:  # tiny frames are first scaled so the short side reaches one factor
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise InputError(f"video aspect ratio {max(height, width) / min(height, width):.1f} is above 200")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    t = round(frames / temporal) * temporal
    if t * h * w > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif t * h * w < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def process_videos(videos: Sequence[Video], image: ImageSettings, s: VideoSettings
                   ) -> tuple[np.ndarray, np.ndarray, list[list[float]]]:
    """pixel_values_videos [sum N_i, C*T*p*p] float32, video_grid_thw [n, 3] int64 and each video's temporal
    patch times in seconds. Frames are sampled per `s` first."""
    rows, grids, times = [], [], []
    tp = image.temporal_patch_size
    for video in videos:
        video = sample(video, s)
        f, height, width, _ = video.frames_fhwc.shape
        h, w = video_smart_resize(f, height, width, image.factor, tp, s.min_pixels, s.max_pixels)
        frames = np.stack([load_frame(Image.fromarray(x), h, w, image) for x in video.frames_fhwc])
        if pad := -f % tp:  # the last temporal patch is filled with copies of the last frame
            frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
        patches, grid = patchify(frames, image)
        rows.append(patches)
        grids.append(grid)
        times.append(temporal_patch_times(video.frame_indices, video.native_fps, tp))
    if not rows:
        return np.zeros((0, 3 * tp * image.patch_size**2), np.float32), np.zeros((0, 3), np.int64), []
    return np.concatenate(rows), np.asarray(grids, np.int64), times
