"""LLaVA-OneVision-1.5 instruct data (lmms-lab/LLaVA-OneVision-1.5-Instruct-Data): `SRC/<subset>/*.parquet`
(the hub's files are `train-*.parquet`).

Columns used: `conversations` (list of {from, value}), and when the shard has them `id` and `image` (one nullable
image struct; text-only subsets have null images). Speakers: human/user -> user, gpt/assistant -> assistant,
system -> system; any other speaker drops the row. Unlike the release, which put the image into the conversation's
first entry only when that entry was a user turn, the image goes to the first user turn wherever it is.
"""

from __future__ import annotations

from typing import Any

from bard_jax.data.convert.conversation import DEFAULT_SYSTEM, Sample, Turn, build_messages, check_turns
from bard_jax.data.convert.image_refs import decode_image
from bard_jax.data.convert.parquet_rows import PARQUET, subset_files
from bard_jax.data.convert.source import RowContext, Source

SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def to_sample(row: dict[str, Any], index: int, ctx: RowContext) -> Sample:
    turns = []
    for entry in row.get("conversations") or []:
        entry = entry or {}
        speaker = entry.get("from") or entry.get("role") or ""
        text = entry.get("value") if entry.get("value") is not None else entry.get("content")
        turns.append(Turn(SPEAKERS.get(speaker, speaker), text or ""))
    image = row.get("image")
    check_turns(turns, has_images=image is not None)
    images = [decode_image(image, ctx.search_dirs)] if image is not None else []
    return Sample(id=ctx.id_of(row, index), messages=build_messages(turns, images, ctx.system))


SOURCE = Source(
    name="llava_ov15",
    has_subsets=True,
    layout="SRC/<subset>/*.parquet",
    find_files=subset_files,
    reader=PARQUET,
    required_columns=("conversations",),
    optional_columns=("id", "image"),
    to_sample=to_sample,
    default_system=DEFAULT_SYSTEM,
)
