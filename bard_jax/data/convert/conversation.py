"""The rules every source shares for turning its turns into our chat messages, and the reasons a row is dropped.

A source module reads a row into `Turn`s (role + text, images already decoded) and calls `build_messages`, so all
sources agree on what a kept conversation looks like (as the release's converters do):

  * a system message first (`--system`, "You are a helpful assistant" by default; none when empty, and none added
    when the row brings a system turn of its own);
  * every image of the row at the front of the FIRST user turn, before its text;
  * the release's `<image>` placeholder tags removed from user text ("<image>\\n", then "\\n<image>", then
    "<image>"): the processor inserts the image tokens itself, and a leftover tag would be trained on as text;
  * a user turn whose text is blank after that keeps only its images.

A row is dropped, never repaired, when its conversation is not one a training step can use; repairing (skipping
an empty turn, trimming a trailing question) would change what the remaining turns answer. Text problems are
checked before any image is decoded (cheap first), in this order, and the first one found is the row's reason:
`NO_TURNS`, `UNKNOWN_ROLE`, `NO_USER_TURN`, `NO_ANSWER` (the last turn must be a non-blank assistant answer: it is
the training target), `EMPTY_TURN` (any other blank turn). Blank means empty or whitespace only; a blank system
turn of the source is left out instead (the default system message takes its place).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from PIL import Image

# Why a row was dropped: the keys of the "dropped" counts in stats.json.
NO_TURNS = "no text turns"
UNKNOWN_ROLE = "unknown role"
NO_USER_TURN = "no user turn"
NO_ANSWER = "no assistant answer"
EMPTY_TURN = "empty turn"
UNDECODABLE_IMAGE = "undecodable image"
IMAGE_NOT_FOUND = "image not found"
VIDEO_NOT_FOUND = "video not found"
MALFORMED_MESSAGES = "malformed messages"
UNKNOWN_CONTENT = "unknown content type"

DEFAULT_SYSTEM = "You are a helpful assistant"
IMAGE_TAGS = ("<image>\n", "\n<image>", "<image>")
ROLES = ("system", "user", "assistant")


class RowDropped(Exception):
    """A source row that is not converted; `reason` is one of the constants above. Control flow, not an error."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass
class Sample:
    """One converted row before its files are written: image parts hold decoded RGB PIL images and video parts
    the source file's path; the shard writer saves them and puts their paths (relative to OUT) in their place."""

    id: str
    messages: list[dict[str, Any]]


@dataclasses.dataclass
class Turn:
    role: str  # one of ROLES (sources map their own names before building)
    text: str
    visual: bool = False  # carries an image or video of its own, so it is not blank without text


def strip_image_tags(text: str) -> str:
    for tag in IMAGE_TAGS:
        text = text.replace(tag, "")
    return text


def blank(text: str | None) -> bool:
    return not (text or "").strip()


def check_turns(turns: list[Turn], has_images: bool) -> None:
    """Raise `RowDropped` with the first text problem of a conversation (see the module docstring)."""
    if not turns:
        raise RowDropped(NO_TURNS)
    if any(t.role not in ROLES for t in turns):
        raise RowDropped(UNKNOWN_ROLE)
    if not any(t.role == "user" for t in turns):
        raise RowDropped(NO_USER_TURN)
    if turns[-1].role != "assistant" or blank(turns[-1].text):
        raise RowDropped(NO_ANSWER)
    first_user = next(i for i, t in enumerate(turns) if t.role == "user")
    for i, t in enumerate(turns):
        text = strip_image_tags(t.text) if t.role == "user" else t.text
        visual = t.visual or (i == first_user and has_images)
        if t.role != "system" and blank(text) and not visual:
            raise RowDropped(EMPTY_TURN)


def build_messages(turns: list[Turn], images: list[Image.Image], system: str) -> list[dict[str, Any]]:
    """Our chat messages for turns that passed `check_turns`, with `images` at the front of the first user turn."""
    turns = [t for t in turns if not (t.role == "system" and blank(t.text))]
    messages: list[dict[str, Any]] = []
    if system and not any(t.role == "system" for t in turns):
        messages.append({"role": "system", "content": system})
    images_placed = False
    for t in turns:
        if t.role == "system":
            messages.append({"role": "system", "content": t.text})
        elif t.role == "assistant":
            messages.append({"role": "assistant", "content": [{"type": "text", "text": t.text}]})
        else:
            content: list[dict[str, Any]] = []
            if not images_placed:
                content += [{"type": "image", "image": im} for im in images]
                images_placed = True
            text = strip_image_tags(t.text)
            if not blank(text):
                content.append({"type": "text", "text": text})
            messages.append({"role": "user", "content": content})
    return messages
