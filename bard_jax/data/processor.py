"""`Processor`: tokenizer + Qwen3-VL image settings from one directory; chat samples to model inputs.

encode_chat renders the checkpoint's chat template, expands each image placeholder to (h/32)*(w/32) image-pad
tokens, and tokenizes (the same ids as transformers' Qwen3-VL processor). encode_training_sample also splits the
rendered sample into the prefix and the target response of spec section 3 (the last assistant turn through its
`<|im_end|>`).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np
from PIL import Image

from bard_jax.data.image import ImageSettings, process_images

_ASSISTANT_NEWLINES = re.compile(r"(<\|im_start\|>assistant)\n+")


class DataError(ValueError):
    """A sample that cannot be encoded (names what is wrong)."""


class Processor:
    def __init__(self, tokenizer: Any, settings: ImageSettings):
        self.tokenizer = tokenizer
        self.settings = settings
        tid = tokenizer.convert_tokens_to_ids
        self.image_pad_id = tid("<|image_pad|>")
        self.im_start_id = tid("<|im_start|>")
        self.im_end_id = tid("<|im_end|>")
        self.assistant_header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)

    @classmethod
    def from_pretrained(cls, path: str, min_pixels: int | None = None, max_pixels: int | None = None) -> Processor:
        from transformers import AutoTokenizer

        tok_dir = os.path.join(path, "tokenizer") if os.path.isdir(os.path.join(path, "tokenizer")) else path
        if not os.path.isdir(tok_dir):
            raise DataError(f"processor directory not found: {path}")
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        cfg_path = os.path.join(tok_dir, "preprocessor_config.json")
        raw = json.load(open(cfg_path)) if os.path.isfile(cfg_path) else {}
        size = raw.get("size") or {}
        settings = ImageSettings(
            patch_size=int(raw.get("patch_size", 16)),
            temporal_patch_size=int(raw.get("temporal_patch_size", 2)),
            merge_size=int(raw.get("merge_size", 2)),
            min_pixels=int(min_pixels or raw.get("min_pixels") or size.get("shortest_edge") or 65536),
            max_pixels=int(max_pixels or raw.get("max_pixels") or size.get("longest_edge") or 16777216),
            image_mean=tuple(raw.get("image_mean", (0.5, 0.5, 0.5))),
            image_std=tuple(raw.get("image_std", (0.5, 0.5, 0.5))),
            rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
        )
        return cls(tokenizer, settings)

    def process_images(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        return process_images(images, self.settings)

    def _images_of(self, messages: list[dict], image_root: str | None) -> list[Image.Image]:
        images = []
        for m in messages:
            content = m.get("content")
            if isinstance(content, str):
                continue
            for part in content:
                kind = part.get("type")
                if kind == "image":
                    src = part.get("image")
                    if isinstance(src, Image.Image):
                        images.append(src)
                        continue
                    path = os.path.join(image_root or "", src)
                    try:
                        with Image.open(path) as im:
                            images.append(im.convert("RGB"))
                    except (OSError, ValueError) as e:
                        raise DataError(f"image {path} cannot be read ({e})") from e
                elif kind != "text":
                    raise DataError(f"unknown content type {kind!r}")
        return images

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    image_root: str | None = None) -> dict[str, np.ndarray]:
        """input_ids [1, T], attention_mask [1, T], mm_token_type_ids [1, T], pixel_values, image_grid_thw."""
        images = self._images_of(messages, image_root)
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        text = _ASSISTANT_NEWLINES.sub(r"\1\n", text)
        pixel_values, grid = self.process_images(images)
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
            "mm_token_type_ids": (ids == self.image_pad_id).astype(np.int64),
        }
        if images:
            out["pixel_values"], out["image_grid_thw"] = pixel_values, grid
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
