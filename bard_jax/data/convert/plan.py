"""Before any row is converted: which shards, their row counts and schemas, and how many rows each may give.

All of it comes from the files' metadata, so mistakes in the command (a wrong --src, an unknown subset, a dataset
of another schema) are reported before anything is written, and progress totals and `--limit` caps are known.

`--limit N` takes the first N source rows (kept or dropped) of the shards in sorted (subset, file) order: each
shard gets its cap from the row counts of the shards before it, so every shard's output is fixed in advance and
the shards can still be converted in parallel and in any order. A shard whose metadata cannot be read is reported
as failed and the others convert; but under a limit, an unknown row count before the limit is reached would make
every later cap a guess, so that is an error instead.
"""

from __future__ import annotations

import dataclasses
import os

from bard_jax.data.convert import finevision, hf_arrow, llava_ov15, mmfinereason
from bard_jax.data.convert.errors import ConvertError
from bard_jax.data.convert.source import Shard, ShardUnreadable, Source

SOURCES: dict[str, Source] = {s.name: s for s in (finevision.SOURCE, llava_ov15.SOURCE, mmfinereason.SOURCE,
                                                  hf_arrow.SOURCE)}


def source_named(name: str) -> Source:
    if name not in SOURCES:
        raise ConvertError(f"unknown source {name!r}; one of: {', '.join(SOURCES)}")
    return SOURCES[name]


def _listing(names: list[str]) -> str:
    return ", ".join(names) if names else "(none)"


def find_shards(source: Source, src: str, subsets: list[str] | None) -> list[Shard]:
    """The input shards, sorted by (subset, file name), restricted to `subsets` when given."""
    if not os.path.isdir(src):
        raise ConvertError(f"--src {src} is not a directory")
    if subsets is not None and not source.has_subsets:
        raise ConvertError(f"{source.name} has no subsets (it reads {source.layout}); leave out --subsets")
    files = source.find_files(src)
    if not files:
        raise ConvertError(f"{src}: no input files found; {source.name} expects {source.layout}")
    if subsets is not None:
        present = sorted({subset for subset, _ in files})
        unknown = [s for s in subsets if s not in present]
        if unknown:
            raise ConvertError(f"{src} has no subset {_listing(unknown)} (a subset is a folder of *.parquet files); "
                               f"it has: {_listing(present)}")
        wanted = set(subsets)
        files = [(subset, path) for subset, path in files if subset in wanted]
    return [Shard(path=path, subset=subset, stem=os.path.splitext(os.path.basename(path))[0],
                  size=os.path.getsize(path)) for subset, path in files]


def read_metadata(source: Source, shard: Shard) -> Shard:
    """The shard with its row count and the columns to read, or its `error` when the file cannot be read."""
    try:
        rows, names = source.reader.describe(shard.path)
    except ShardUnreadable as e:
        return dataclasses.replace(shard, error=str(e))
    missing = [c for c in source.required_columns if c not in names]
    if missing:
        raise ConvertError(f"{shard.path}: no column {_listing([repr(c) for c in missing])}; {source.name} shards "
                           f"need {_listing(list(source.required_columns))}, and this one has {_listing(names)}")
    columns = source.required_columns + tuple(c for c in source.optional_columns if c in names)
    return dataclasses.replace(shard, rows=rows, columns=columns)


def shard_caps(shards: list[Shard], limit: int | None) -> list[int | None]:
    """Rows to take from each shard (its row count without a limit); None for a shard the limit leaves out or
    whose metadata failed."""
    caps: list[int | None] = []
    left = limit
    for shard in shards:
        if shard.rows is None:
            if left is not None and left > 0:
                raise ConvertError(f"{shard.path}: its row count cannot be read ({shard.error}), so --limit "
                                   f"{limit} cannot be spread over the shards deterministically; fix or remove the "
                                   f"file, or convert without --limit")
            caps.append(None)
        elif left is None:
            caps.append(shard.rows)
        else:
            caps.append(min(shard.rows, left) if left > 0 else None)
            left -= caps[-1] or 0
    return caps
