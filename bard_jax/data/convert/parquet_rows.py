"""Parquet shards read a few rows at a time, and the hub's parquet layouts found on disk.

Image sets store the image bytes in the rows, so a shard can be many GB: rows are streamed with
`ParquetFile.iter_batches` (one row group's column chunks in memory at most, handed out in small batches), and only
the columns the source uses are read. Row counts come from the footer, so progress totals and `--limit` caps are
known before any row is read.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bard_jax.data.convert.source import RowReader, ShardUnreadable

# Rows per batch handed to the converter: small, because a row may hold several large images.
BATCH_ROWS = 64


def _open(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise ShardUnreadable(f"not a readable parquet file ({e})") from e


def describe(path: str) -> tuple[int, list[str]]:
    file = _open(path)
    try:
        return file.metadata.num_rows, list(file.schema_arrow.names)
    except (OSError, pa.ArrowException) as e:  # a footer that parses but a schema Arrow cannot map
        raise ShardUnreadable(f"unreadable schema ({e})") from e
    finally:
        file.close()


def batches(path: str, columns: list[str], cap: int) -> Iterator[list[dict[str, Any]]]:
    if cap <= 0:
        return
    file = _open(path)
    taken = 0
    try:
        for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            rows = batch.slice(0, cap - taken).to_pylist()
            taken += len(rows)
            yield rows
            if taken >= cap:
                return
    except (OSError, pa.ArrowException) as e:  # a corrupt page or a truncated file part-way through
        raise ShardUnreadable(f"unreadable after row {taken} ({e})") from e
    finally:
        file.close()


PARQUET = RowReader(describe=describe, batches=batches)


def subset_files(src: str, pattern: str = "*.parquet") -> list[tuple[str, str]]:
    """(subset, path) of `src/<subset>/<pattern>` for every subset directory, sorted by subset then file name."""
    found = []
    for subset in sorted(os.listdir(src)) if os.path.isdir(src) else []:
        for path in sorted(glob.glob(os.path.join(glob.escape(os.path.join(src, subset)), pattern))):
            if os.path.isfile(path):
                found.append((subset, path))
    return found
