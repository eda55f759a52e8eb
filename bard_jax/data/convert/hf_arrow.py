"""The release's prebuilt mixed training set: a `datasets` `save_to_disk` directory whose `messages` column already
holds chat messages (see `arrow_rows` for the files).

`messages` is a JSON string or a list of {role, content}; content is a string or a list of parts {type, text,
image, video, ...}. Arrow gives every part every field of the struct, so fields that are null are dropped (as the
release's reader does). The conversation is kept as it is (no system message is added unless --system asks, and
no text is changed); only its files move into OUT:

  * an image part's `image` is a struct {bytes, path} or a path string (relative to --image-root, by default
    --src); it is decoded and stored like every other source's images;
  * a video part's `video` is a path (relative to --image-root); the file is copied under OUT/videos/.

A part without `type` is typed by the field it holds. A row is dropped when its messages cannot be parsed, a role
or part type is unknown, an image or video is missing or an image is undecodable, or its turns fail the shared
checks (`conversation.check_turns`; a turn with an image or video of its own is not blank).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bard_jax.data.convert.arrow_rows import ARROW, STATE_FILE, find_files
from bard_jax.data.convert.conversation import (
    MALFORMED_MESSAGES,
    UNKNOWN_CONTENT,
    VIDEO_NOT_FOUND,
    RowDropped,
    Sample,
    Turn,
    check_turns,
)
from bard_jax.data.convert.image_refs import decode_image, resolve_path
from bard_jax.data.convert.source import RowContext, Source

PART_FIELDS = ("text", "image", "video")


def drop_nulls(value: Any) -> Any:
    if isinstance(value, list):
        return [drop_nulls(v) for v in value if v is not None]
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    return value


def _parse(messages: Any) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except ValueError as e:
            raise RowDropped(MALFORMED_MESSAGES) from e
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise RowDropped(MALFORMED_MESSAGES)
    messages = drop_nulls(messages)
    for m in messages:
        content = m.get("content", "")
        if not isinstance(content, (str, list)) or (
                isinstance(content, list) and not all(isinstance(p, dict) for p in content)):
            raise RowDropped(MALFORMED_MESSAGES)
    return messages


def _part_type(part: dict[str, Any]) -> str:
    kind = part.get("type") or next((f for f in PART_FIELDS if f in part), "")
    if kind not in PART_FIELDS:
        raise RowDropped(UNKNOWN_CONTENT)
    if kind not in part or (kind == "text" and not isinstance(part["text"], str)):
        raise RowDropped(MALFORMED_MESSAGES)
    return kind


def _load_part(part: dict[str, Any], search_dirs: Sequence[str]) -> dict[str, Any]:
    """The part with its image decoded or its video resolved to the source file's path."""
    kind = _part_type(part)
    part = {**part, "type": kind}
    if kind == "image":
        part["image"] = decode_image(part["image"], search_dirs)
    elif kind == "video":
        if not isinstance(part["video"], str):
            raise RowDropped(MALFORMED_MESSAGES)
        found = resolve_path(part["video"], search_dirs)
        if found is None:
            raise RowDropped(VIDEO_NOT_FOUND)
        part["video"] = found
    return part


def _turn(message: dict[str, Any]) -> Turn:
    content = message.get("content", "")
    if isinstance(content, str):
        return Turn(message.get("role") or "", content)
    kinds = [_part_type(p) for p in content]
    text = "".join(p["text"] for p, k in zip(content, kinds) if k == "text")
    return Turn(message.get("role") or "", text, visual=any(k != "text" for k in kinds))


def to_sample(row: dict[str, Any], index: int, ctx: RowContext) -> Sample:
    messages = _parse(row.get("messages"))
    check_turns([_turn(m) for m in messages], has_images=False)
    out = []
    if ctx.system and not any(m.get("role") == "system" for m in messages):
        out.append({"role": "system", "content": ctx.system})
    for m in messages:
        content = m.get("content", "")
        if isinstance(content, list):
            content = [_load_part(p, ctx.search_dirs) for p in content]
        out.append({**m, "content": content})
    return Sample(id=ctx.id_of(row, index), messages=out)


SOURCE = Source(
    name="hf_arrow",
    has_subsets=False,
    layout=f"SRC/{STATE_FILE} listing Arrow files SRC/data-*.arrow (a datasets save_to_disk directory)",
    find_files=find_files,
    reader=ARROW,
    required_columns=("messages",),
    optional_columns=("id",),
    to_sample=to_sample,
    default_system="",
    paths_from_shard_dir=False,
)
