"""What a convertible source is: where its shards are, how its rows are read, and how one row becomes a `Sample`.

Each source module (finevision, llava_ov15, mmfinereason, hf_arrow) defines one `Source`; the runner treats them
all alike. A source is split into shards, the input files, each converted on its own (one output JSONL per input
shard), so that shards can be converted in parallel, skipped when done and retried when they fail.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from bard_jax.data.convert.conversation import Sample


class ShardUnreadable(Exception):
    """An input shard that cannot be read (corrupt, truncated): the shard fails, the others still convert."""


@dataclasses.dataclass(frozen=True)
class RowReader:
    """How one file format is read. Every function raises `ShardUnreadable` for a file it cannot read."""

    describe: Callable[[str], tuple[int, list[str]]]  # (row count, column names), from the file's metadata
    # (path, columns, at most this many rows) -> batches of rows as dicts, in file order
    batches: Callable[[str, list[str], int], Iterator[list[dict[str, Any]]]]


@dataclasses.dataclass(frozen=True)
class Shard:
    """One input file. `subset` is "" for sources without subsets; `rows` is None when its metadata cannot be
    read (then `error` says why, and the shard is reported as failed)."""

    path: str
    subset: str
    stem: str
    size: int = 0  # bytes: a finished shard whose source file changed size since is converted again
    rows: int | None = None
    columns: tuple[str, ...] = ()
    error: str | None = None

    @property
    def name(self) -> str:
        """How stats and messages name the shard, and where its output goes (relative to OUT, no extension)."""
        return f"{self.subset}/{self.stem}" if self.subset else self.stem


@dataclasses.dataclass(frozen=True)
class RowContext:
    """What a source's row converter needs besides the row."""

    source_tag: str  # the record's "source" field: "finevision/CLEVR", "mmfinereason"
    shard: Shard
    search_dirs: tuple[str, ...]  # where a relative image (or video) path is looked for, in order
    system: str

    def id_of(self, row: dict[str, Any], index: int) -> str:
        """The row's `id` column, or for a source without one a deterministic "<subset>/<shard stem>/<index>"."""
        row_id = row.get("id")
        return str(row_id) if row_id is not None else f"{self.shard.name}/{index}"


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    has_subsets: bool
    layout: str  # the files it expects, for error messages: "SRC/<subset>/*.parquet"
    find_files: Callable[[str], list[tuple[str, str]]]  # src -> sorted (subset, path)
    reader: RowReader
    required_columns: tuple[str, ...]
    optional_columns: tuple[str, ...]  # read when the shard has them
    to_sample: Callable[[dict[str, Any], int, RowContext], Sample]  # raises RowDropped
    default_system: str
    # Where a relative image path is looked for: the shard's directory, then SRC or --image-root (parquet sets,
    # whose paths are usually relative to the file), or --image-root alone (the Arrow set, as its reader did).
    paths_from_shard_dir: bool = True
