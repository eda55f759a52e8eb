"""MMFineReason (OpenDataArena/MMFineReason-1.8M): `SRC/sft-*.parquet`, or `SRC/data/sft-*.parquet` when the files
sit in a `data/` folder (as hub datasets often do); no subsets.

Columns used: `question`, `image` (nullable image struct), `qwen3vl_235b_thinking_response` (the answer, with its
reasoning) and `original_answer` (the answer when the response is blank), and `id` when present. One user turn and
one assistant turn; question and answer are stripped of surrounding whitespace, as the release does.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from bard_jax.data.convert.conversation import DEFAULT_SYSTEM, Sample, Turn, blank, build_messages, check_turns
from bard_jax.data.convert.image_refs import decode_image
from bard_jax.data.convert.parquet_rows import PARQUET
from bard_jax.data.convert.source import RowContext, Source


def find_files(src: str) -> list[tuple[str, str]]:
    for directory in (src, os.path.join(src, "data")):
        found = sorted(p for p in glob.glob(os.path.join(glob.escape(directory), "sft-*.parquet")) if os.path.isfile(p))
        if found:
            return [("", p) for p in found]
    return []


def to_sample(row: dict[str, Any], index: int, ctx: RowContext) -> Sample:
    answer = row.get("qwen3vl_235b_thinking_response") or ""
    if blank(answer):
        answer = row.get("original_answer") or ""
    turns = [Turn("user", (row.get("question") or "").strip()), Turn("assistant", answer.strip())]
    image = row.get("image")
    check_turns(turns, has_images=image is not None)
    images = [decode_image(image, ctx.search_dirs)] if image is not None else []
    messages = build_messages(turns, images, ctx.system)
    for part in messages[-2]["content"]:  # the question was stripped before its tags were removed: strip again
        if part["type"] == "text":
            part["text"] = part["text"].strip()
    return Sample(id=ctx.id_of(row, index), messages=messages)


SOURCE = Source(
    name="mmfinereason",
    has_subsets=False,
    layout="SRC/sft-*.parquet or SRC/data/sft-*.parquet",
    find_files=find_files,
    reader=PARQUET,
    required_columns=("question", "image", "original_answer", "qwen3vl_235b_thinking_response"),
    optional_columns=("id",),
    to_sample=to_sample,
    default_system=DEFAULT_SYSTEM,
)
