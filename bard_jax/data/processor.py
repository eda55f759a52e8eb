"""`Processor`: tokenizer + Qwen3-VL image and video settings from one directory; chat samples to model inputs.

encode_chat renders the checkpoint's chat template, expands each image placeholder to (h/32)*(w/32) image-pad
tokens and each video placeholder to one timestamped group of video-pad tokens per temporal patch, and tokenizes
(the same ids as transformers' Qwen3-VL processor).

Content parts: `{"type": "text", "text": ...}`, `{"type": "image", "image": PIL image or path}`,
`{"type": "video", "video": ..., "fps": native frame rate}` where the video is a file path (decoded with PyAV), a
list of frames (PIL images or image paths) or an array [F, H, W, 3] uint8; frames are sampled at the processor's
`fps` (2 per second by default) from the native rate (24 when not given, as transformers assumes).

encode_training_sample also splits the rendered sample into the prefix and the target response of spec section 3
(the last assistant turn through its `<|im_end|>`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import numpy as np
from PIL import Image

from bard_jax.data.image import ImageSettings, process_images
from bard_jax.data.video import Video, VideoSettings, as_video, process_videos, read_video
from bard_jax.errors import BardError

_ASSISTANT_NEWLINES = re.compile(r"(<\|im_start\|>assistant)\n+")


# One of these makes a directory a tokenizer directory (transformers' fast and slow tokenizer files).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class DataError(BardError, ValueError):
    """A sample that cannot be encoded (names what is wrong)."""


RELEASE_MASK_ID = 151671  # the release's mask token id (spec section 2)


class Processor:
    def __init__(self, tokenizer: Any, settings: ImageSettings, video_settings: VideoSettings | None = None):
        self.tokenizer = tokenizer
        self.settings = settings
        self.video_settings = video_settings or VideoSettings()
        tid = tokenizer.convert_tokens_to_ids
        self.image_pad_id = tid("<|image_pad|>")
        self.video_pad_id = tid("<|video_pad|>")
        self.im_start_id = tid("<|im_start|>")
        self.im_end_id = tid("<|im_end|>")
        self.assistant_header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)

    def mask_id(self, default: int = RELEASE_MASK_ID) -> int:
        """The mask token: the tokenizer's `<|mask|>` when it has one, else `default` (the release's id: BARD-VL
        checkpoints use an embedding row past the tokenizer's tokens)."""
        tok = self.tokenizer
        return int(tok.convert_tokens_to_ids("<|mask|>")) if "<|mask|>" in tok.get_vocab() else int(default)

    @classmethod
    def from_pretrained(cls, path: str, min_pixels: int | None = None, max_pixels: int | None = None) -> Processor:
        from bard_jax.quiet_transformers import import_transformers

        if min_pixels and max_pixels and min_pixels > max_pixels:
            raise DataError(f"min_pixels {min_pixels} > max_pixels {max_pixels}: no image size fits that range")
        AutoTokenizer = import_transformers().AutoTokenizer
        tok_dir = os.path.join(path, "tokenizer") if os.path.isdir(os.path.join(path, "tokenizer")) else path
        if not os.path.isdir(tok_dir):
            raise DataError(f"processor directory not found: {path}")
        if not any(os.path.isfile(os.path.join(tok_dir, name)) for name in TOKENIZER_FILES):
            raise DataError(f"{path}: no tokenizer files (none of {', '.join(TOKENIZER_FILES)})")
        try:
            tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        except (ValueError, OSError) as e:  # transformers' message for a broken or partial tokenizer directory
            raise DataError(f"{tok_dir}: the tokenizer cannot be loaded ({str(e).splitlines()[0]})") from e
        settings = image_settings_of_dir(tok_dir, min_pixels, max_pixels)
        video_path = os.path.join(tok_dir, "video_preprocessor_config.json")
        video_raw = json.load(open(video_path)) if os.path.isfile(video_path) else {}
        return cls(tokenizer, settings, VideoSettings.from_dict(video_raw))

    def process_images(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """PIL images -> (pixel_values [N, C], image_grid_thw [n, 3])."""
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image):
                hint = " (open it first: PIL.Image.open(path))" if isinstance(image, (str, os.PathLike)) else ""
                raise DataError(f"process_images: image {i} is a {type(image).__name__}, not a PIL image{hint}")
        return process_images(images, self.settings)

    def process_videos(self, videos: list[Any], fps: float | list[float] | None = None
                       ) -> tuple[np.ndarray, np.ndarray, list[list[float]]]:
        """Videos (frame lists, arrays [F, H, W, 3] or `Video`s) -> (pixel_values_videos [N, C*2*16*16],
        video_grid_thw [n, 3], seconds of each temporal patch per video); `fps` is the native frame rate."""
        rates = fps if isinstance(fps, (list, tuple)) else [fps] * len(videos)
        clips = [v if isinstance(v, Video) else as_video(v, r) for v, r in zip(videos, rates)]
        try:
            return process_videos(clips, self.settings, self.video_settings)
        except ValueError as e:
            raise DataError(str(e)) from e

    @staticmethod
    def _open_image(src: Any, image_root: str | None) -> Image.Image:
        if isinstance(src, Image.Image):
            return src
        path = os.path.join(image_root or "", src)
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as e:
            raise DataError(f"image {path} cannot be read ({e})") from e

    def _video_of(self, part: dict, image_root: str | None) -> Video:
        src, fps = part.get("video"), part.get("fps")
        try:
            if isinstance(src, str):
                video = read_video(os.path.join(image_root or "", src))
                return video if fps is None else dataclasses.replace(video, native_fps=float(fps))
            if isinstance(src, np.ndarray):
                return as_video(src, fps)
            return as_video([self._open_image(f, image_root) for f in src or []], fps)
        except ValueError as e:
            raise DataError(str(e)) from e

    def _visuals_of(self, messages: list[dict], image_root: str | None) -> tuple[list[Image.Image], list[Video]]:
        images, videos = [], []
        for m in messages:
            content = m.get("content")
            if isinstance(content, str):
                continue
            for part in content:
                kind = part.get("type")
                if kind == "image":
                    images.append(self._open_image(part.get("image"), image_root))
                elif kind == "video":
                    videos.append(self._video_of(part, image_root))
                elif kind != "text":
                    raise DataError(f"unknown content type {kind!r}")
        return images, videos

    def _expand_videos(self, text: str, grids: np.ndarray, times: list[list[float]]) -> str:
        """Each video -> per temporal patch `<t seconds><|vision_start|>pads<|vision_end|>`. The chat template wraps
        the video pad in its own vision start/end; the expansion replaces the wrapper with it, so that the frames are
        not wrapped twice (as transformers 4.57, the release's, does, and 5.25; some 5.x releases before it, 5.24
        among them, kept the wrapper). A bare pad (no wrapper) is expanded in place."""
        wrapper = "<|vision_start|><|video_pad|><|vision_end|>"
        pieces = text.replace(wrapper, "<|video_pad|>").split("<|video_pad|>")
        if len(pieces) - 1 != len(grids):
            raise DataError(f"{len(pieces) - 1} video placeholders for {len(grids)} videos")
        unit = self.settings.merge_size**2
        out = pieces[0]
        for g, secs, piece in zip(grids, times, pieces[1:]):
            per_frame = int(g[1] * g[2] // unit)
            out += "".join(f"<{t:.1f} seconds><|vision_start|>" + "<|video_pad|>" * per_frame + "<|vision_end|>"
                           for t in secs[: int(g[0])]) + piece
        return out

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    image_root: str | None = None) -> dict[str, np.ndarray]:
        """input_ids [1, T], attention_mask [1, T], mm_token_type_ids [1, T] (1 image, 2 video), and when present
        pixel_values / image_grid_thw and pixel_values_videos / video_grid_thw."""
        images, videos = self._visuals_of(messages, image_root)
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        text = _ASSISTANT_NEWLINES.sub(r"\1\n", text)
        pixel_values, grid = self.process_images(images)
        video_pixels, video_grid, video_times = self.process_videos(videos)
        text = self._expand_videos(text, video_grid, video_times)
        pieces = text.split("<|image_pad|>")
        if len(pieces) - 1 != len(images):
            raise DataError(f"{len(pieces) - 1} image placeholders for {len(images)} images")
        unit = self.settings.merge_size**2
        expanded = pieces[0]
        for g, piece in zip(grid, pieces[1:]):
            expanded += "<|image_pad|>" * int(np.prod(g) // unit) + piece
        ids = np.asarray(self.tokenizer.encode(expanded, add_special_tokens=False), np.int64)[None]
        out = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "mm_token_type_ids": (ids == self.image_pad_id).astype(np.int64) + 2 * (ids == self.video_pad_id),
        }
        if images:
            out["pixel_values"], out["image_grid_thw"] = pixel_values, grid
        if videos:
            out["pixel_values_videos"], out["video_grid_thw"] = video_pixels, video_grid
        return out

    def encode_training_sample(self, messages: list[dict], image_root: str | None = None) -> dict[str, Any]:
        """encode_chat without generation prompt, plus prefix_ids / response_ids (spec section 3)."""
        if not any(m.get("role") == "assistant" for m in messages):
            raise DataError("sample has no assistant turn")
        enc = self.encode_chat(messages, add_generation_prompt=False, image_root=image_root)
        ids = enc["input_ids"][0]
        head = self.assistant_header
        start = None
        for i in range(len(ids) - len(head[:2]), -1, -1):
            if list(ids[i: i + 2]) == head[:2]:
                start = i + 3  # skip <|im_start|>, assistant, and one newline
                break
        if start is None:
            raise DataError("no assistant header in the rendered sample")
        ends = np.nonzero(ids[start:] == self.im_end_id)[0]
        end = start + int(ends[0]) + 1 if len(ends) else len(ids)
        response = ids[start:end]
        if len(response) <= 1:
            raise DataError("empty response")
        enc["prefix_ids"] = ids[:start]
        enc["response_ids"] = response
        return enc


def image_settings_of_dir(directory: str, min_pixels: int | None = None, max_pixels: int | None = None
                          ) -> ImageSettings:
    """The image settings of a processor directory's `preprocessor_config.json` (transformers' defaults for what it
    does not say, or when there is none); `min_pixels` / `max_pixels` override it when given."""
    path = os.path.join(directory, "preprocessor_config.json")
    raw = json.load(open(path)) if os.path.isfile(path) else {}
    size = raw.get("size") or {}
    default = ImageSettings()
    return ImageSettings(
        patch_size=int(raw.get("patch_size", default.patch_size)),
        temporal_patch_size=int(raw.get("temporal_patch_size", default.temporal_patch_size)),
        merge_size=int(raw.get("merge_size", default.merge_size)),
        min_pixels=int(min_pixels or raw.get("min_pixels") or size.get("shortest_edge") or default.min_pixels),
        max_pixels=int(max_pixels or raw.get("max_pixels") or size.get("longest_edge") or default.max_pixels),
        image_mean=tuple(raw.get("image_mean", default.image_mean)),
        image_std=tuple(raw.get("image_std", default.image_std)),
        rescale_factor=float(raw.get("rescale_factor", default.rescale_factor)),
    )
