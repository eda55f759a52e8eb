"""FineVision (HuggingFaceM4/FineVision): `SRC/<subset>/*.parquet`, one directory per subset.

Columns used: `images` (list of image structs, possibly empty) and `texts` (list of {user, assistant} rounds, or that
list as a JSON string). The
`source` and rating columns are not used. Rows have no id; one is derived from subset, shard and row. Each round is
a user turn and an assistant turn; all images go to the first user turn (see `conversation`).
"""

from __future__ import annotations

import json
from typing import Any

from bard_jax.data.convert.conversation import (
    DEFAULT_SYSTEM,
    MALFORMED_MESSAGES,
    RowDropped,
    Sample,
    Turn,
    build_messages,
    check_turns,
)
from bard_jax.data.convert.image_refs import decode_image
from bard_jax.data.convert.parquet_rows import PARQUET, subset_files
from bard_jax.data.convert.source import RowContext, Source


def rounds_of(texts: Any) -> list[dict[str, Any]]:
    """The `texts` column as a list of {user, assistant} rounds. Some copies of the dataset store it as a JSON
    string; it is accepted so. Anything else that is not a list of such objects drops the row (a counted reason)."""
    if isinstance(texts, str):
        try:
            texts = json.loads(texts)
        except ValueError:
            raise RowDropped(MALFORMED_MESSAGES) from None
    texts = texts or []
    if not isinstance(texts, (list, tuple)) or not all(r is None or isinstance(r, dict) for r in texts):
        raise RowDropped(MALFORMED_MESSAGES)
    return [r or {} for r in texts]


def to_sample(row: dict[str, Any], index: int, ctx: RowContext) -> Sample:
    turns = []
    for rnd in rounds_of(row.get("texts")):
        turns += [Turn("user", rnd.get("user") or ""), Turn("assistant", rnd.get("assistant") or "")]
    images = row.get("images") or []
    check_turns(turns, has_images=bool(images))
    decoded = [decode_image(im, ctx.search_dirs) for im in images]
    return Sample(id=ctx.id_of(row, index), messages=build_messages(turns, decoded, ctx.system))


SOURCE = Source(
    name="finevision",
    has_subsets=True,
    layout="SRC/<subset>/*.parquet",
    find_files=subset_files,
    reader=PARQUET,
    required_columns=("images", "texts"),
    optional_columns=("id",),
    to_sample=to_sample,
    default_system=DEFAULT_SYSTEM,
)
