"""One benchmark: where its split lives, which columns it reads, and how a row becomes images, prompt and target.

The per-task rules (prompt text, which images and in what order, the reference answer) are plain functions held
by the `Task`, so the seven definitions in `bard_jax.eval.tasks` read as data and each rule can be tested alone.
The prompt is the user text that follows the images in the chat: the task's own text with the literal "<image>"
placeholder removed, as the release's model wrapper does before it builds the message (it puts every image first,
so a placeholder would only be noise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from PIL import Image

from bard_jax.eval.data import decode_image
from bard_jax.eval.errors import EvalError

IMAGE_PLACEHOLDER = "<image>"
SYSTEM_PROMPT = "You are a helpful assistant."  # the release's lmms-eval wrapper's system turn


@dataclasses.dataclass(frozen=True)
class Task:
    """A benchmark split and its prompt rules.

    `files` are glob patterns under ROOT/<hub_path>, tried in order: the first that matches any file selects the
    split (so a hub layout and its converted variant never both count). `text`, `visual_columns` and
    `target_of` take one row (a dict of `columns`) and give the task's text before placeholder removal, the image
    columns to show in order, and the reference answer.
    """

    name: str
    hub_path: str
    files: tuple[str, ...]
    columns: tuple[str, ...]
    image_columns: tuple[str, ...]
    max_new_tokens: int
    split: str
    text: Callable[[dict], str] = dataclasses.field(repr=False, compare=False)
    visual_columns: Callable[[dict], list[str]] = dataclasses.field(repr=False, compare=False)
    target_of: Callable[[dict], str] = dataclasses.field(repr=False, compare=False)
    # The system turn before the user's (the release's wrapper adds "You are a helpful assistant."); None for a
    # task whose models were trained without one (the synthetic task).
    system: str | None = SYSTEM_PROMPT
    # "parquet" (a hub split) or "jsonl" (chat records in our training format: `jsonl_row` makes each a row).
    reader: str = "parquet"
    jsonl_row: Callable[[dict, str], dict] | None = dataclasses.field(default=None, repr=False, compare=False)

    def visuals(self, doc: dict) -> list[Image.Image]:
        """The row's images, decoded to RGB, in the order the task shows them; a null or bad one is an EvalError."""
        images = []
        for column in self.visual_columns(doc):
            if column not in doc:
                raise EvalError(f"{self.name}: the row refers to image column {column!r}, which it does not have")
            if doc[column] is None:
                raise EvalError(f"{self.name}: the row's image column {column!r} is null but the question uses it")
            try:
                images.append(decode_image(doc[column]))
            except EvalError as e:
                raise EvalError(f"{self.name}: column {column!r}: {e}") from None
        return images

    def prompt(self, doc: dict) -> str:
        """The user text after the images, exactly as the release's harness gives it to the model."""
        return self.text(doc).replace(IMAGE_PLACEHOLDER, "")

    def target(self, doc: dict) -> str:
        """The reference answer as the task reports it (the value written to samples.jsonl)."""
        return self.target_of(doc)
