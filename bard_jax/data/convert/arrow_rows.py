"""Rows of a `datasets` `save_to_disk` directory, read with pyarrow alone (the `datasets` package is not needed).

Such a directory holds `state.json` (its `_data_files` list names the data files in order), `dataset_info.json`
and the data files: Arrow IPC *stream* files (what `datasets` writes), read here memory-mapped, so only the pages
of the rows and columns used are touched; the IPC *file* format is accepted too. A stream has no footer, so its
row count is found by walking its record batch headers (the bodies stay unread in the map).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from bard_jax.data.convert.errors import ConvertError
from bard_jax.data.convert.parquet_rows import BATCH_ROWS
from bard_jax.data.convert.source import RowReader, ShardUnreadable

STATE_FILE = "state.json"


def find_files(src: str) -> list[tuple[str, str]]:
    """("", path) of each data file `src/state.json` lists, sorted; [] when there is no state.json."""
    state_path = os.path.join(src, STATE_FILE)
    if not os.path.isfile(state_path):
        return []
    problem = None
    try:
        with open(state_path) as f:
            names = [entry["filename"] for entry in json.load(f).get("_data_files") or []]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        names, problem = [], f"{type(e).__name__}: {e}"
    if not names:  # an unreadable or hand-made state.json: the data files as datasets names them
        names = [os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(src), "*.arrow"))]
    if not names and problem:
        raise ConvertError(f"{state_path} cannot be read ({problem}) and {src} holds no *.arrow file to fall back on")
    return [("", os.path.join(src, name)) for name in sorted(names)]


def _record_batches(path: str) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    try:
        source = pa.memory_map(path)
        try:
            reader = pa.ipc.open_stream(source)
            return reader.schema, iter(reader)
        except pa.ArrowInvalid:
            file_reader = pa.ipc.open_file(source)
            return file_reader.schema, (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
    except (OSError, pa.ArrowException) as e:
        raise ShardUnreadable(f"not a readable Arrow IPC stream or file ({e})") from e


def describe(path: str) -> tuple[int, list[str]]:
    schema, record_batches = _record_batches(path)
    try:
        return sum(b.num_rows for b in record_batches), list(schema.names)
    except (OSError, pa.ArrowException) as e:
        raise ShardUnreadable(f"truncated or corrupt Arrow data ({e})") from e


def batches(path: str, columns: list[str], cap: int) -> Iterator[list[dict[str, Any]]]:
    if cap <= 0:
        return
    _, record_batches = _record_batches(path)
    taken = 0
    try:
        for batch in record_batches:
            batch = batch.select(columns)
            # `datasets` writes up to 1000 rows per record batch: hand them out a few at a time (zero-copy slices
            # of the map) so that a batch of images is never all decoded to Python at once.
            for start in range(0, batch.num_rows, BATCH_ROWS):
                rows = batch.slice(start, min(BATCH_ROWS, cap - taken)).to_pylist()
                taken += len(rows)
                yield rows
                if taken >= cap:
                    return
    except (OSError, pa.ArrowException) as e:
        raise ShardUnreadable(f"unreadable after row {taken} ({e})") from e


ARROW = RowReader(describe=describe, batches=batches)
