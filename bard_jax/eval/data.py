"""Reading a benchmark split from the hub's parquet files, without the `datasets` library.

A user points the evaluation at a folder holding hub snapshots (ROOT/<owner>/<name>/...). The split is read with
pyarrow one record batch at a time and only in the columns the task needs, so a multi-gigabyte split (MMMU, with
up to seven images a row) never sits in memory at once. Images stay in the hub's {bytes, path} struct until the
task asks for them, so a row that cannot be decoded fails alone and the runner can count it.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from bard_jax.data.hub_image import decode_hub_image
from bard_jax.data.processor import DataError
from bard_jax.eval.errors import EvalError

if TYPE_CHECKING:
    from bard_jax.eval.task import Task

BATCH_ROWS = 32  # rows per record batch: a few images each, small enough to bound memory on MMMU
_IMAGE_COLUMN = re.compile(r"image(_\d+)?")


def task_dir(root: str | os.PathLike, task: Task) -> str:
    """ROOT/<hub_path>: where the task's snapshot is expected."""
    return os.path.join(os.fspath(root), *task.hub_path.split("/"))


def split_files(root: str | os.PathLike, task: Task) -> list[str]:
    """The split's parquet files in sorted path order: the first of `task.files` that matches anything wins."""
    base = task_dir(root, task)
    if not os.path.isdir(base):
        raise EvalError(f"{task.name}: no dataset directory {base} (download {task.hub_path} from the hub there)")
    for pattern in task.files:
        found = [p for p in glob.glob(os.path.join(glob.escape(base), pattern)) if os.path.isfile(p)]
        if found:
            return sorted(found, key=lambda p: os.path.relpath(p, base))
    raise EvalError(f"{task.name}: no file of the {task.split} split under {base}; expected one matching "
                    + " or ".join(repr(p) for p in task.files))


# Columns every task reads as text (the prompt and the reference answer): their type is checked per file.
TEXT_COLUMNS = ("question", "answer")


def check_schema(task: Task, path: str, schema: pa.Schema) -> None:
    """EvalError naming the file unless `schema` holds every column the task reads, its text columns as strings."""
    missing = [c for c in task.columns if c not in schema.names]
    if missing:
        raise EvalError(f"{task.name}: {path} has no column {missing[0]!r} (the task needs "
                        f"{', '.join(task.columns)}; the file has {', '.join(schema.names)})")
    for column in TEXT_COLUMNS:
        kind = schema.field(column).type if column in task.columns else None
        if kind is not None and not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            # Anything else would become a garbage prompt, or fail in the scorer after decoding.
            raise EvalError(f"{task.name}: {path}: column {column!r} holds {kind}, not text (the published split "
                            "stores it as a string)")


def check_split(root: str | os.PathLike, task: Task) -> None:
    """Every file of a parquet split has the columns and types the task reads (footers only: nothing else read)."""
    if task.reader == "jsonl":
        return
    for path in split_files(root, task):
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as e:
            raise EvalError(f"{task.name}: cannot read parquet file {path}: {e}") from None
        check_schema(task, path, schema)


def read_docs(root: str | os.PathLike, task: Task, limit: int | None = None) -> Iterator[tuple[int, dict]]:
    """(doc_id, row) over the split in file order; doc_id is the row's index in the whole split.

    Only `task.columns` are read. A file that lacks one of them, or is not readable parquet, is an EvalError
    naming the file, raised before any of its rows is yielded.
    """
    if limit is not None and limit <= 0:
        return
    if task.reader == "jsonl":
        yield from _jsonl_docs(root, task, limit)
        return
    doc_id = 0
    for path in split_files(root, task):
        try:
            parquet = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as e:
            raise EvalError(f"{task.name}: cannot read parquet file {path}: {e}") from None
        check_schema(task, path, parquet.schema_arrow)
        try:
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=list(task.columns)):
                for row in batch.to_pylist():
                    yield doc_id, row
                    doc_id += 1
                    if limit is not None and doc_id >= limit:
                        return
        except (OSError, pa.ArrowException) as e:
            raise EvalError(f"{task.name}: cannot read parquet file {path}: {e}") from None


def _jsonl_docs(root: str | os.PathLike, task: Task, limit: int | None) -> Iterator[tuple[int, dict]]:
    """(doc_id, row) of a JSONL split of chat records (our training format); `task.jsonl_row(record, base_dir)`
    turns a record into the task's row. A line that is not such a record is an EvalError naming file and line."""
    import json

    doc_id = 0
    for path in split_files(root, task):
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = task.jsonl_row(json.loads(line), os.path.dirname(path))
                except (ValueError, KeyError, IndexError, TypeError) as e:
                    raise EvalError(f"{task.name}: {path}:{number}: not a record of the task ({e})") from None
                yield doc_id, row
                doc_id += 1
                if limit is not None and doc_id >= limit:
                    return


def _is_binary(value: Any) -> bool:
    return isinstance(value, (bytes, bytearray, memoryview)) or (isinstance(value, dict) and "bytes" in value)


def text_fields(doc: dict) -> dict:
    """The row without its images (binary values, {bytes, path} structs, null image_N cells): what scorers see."""
    return {k: v for k, v in doc.items() if not _is_binary(v) and not (v is None and _IMAGE_COLUMN.fullmatch(k))}


def decode_image(value: Any, base_dir: str | os.PathLike | None = None) -> Image.Image:
    """An RGB image from the hub's {bytes, path} struct (or raw bytes); null bytes read `path` instead.

    A relative path is taken from `base_dir` (default: the working directory). Anything that does not decode is an
    EvalError, so one broken row is reported and scored as wrong instead of stopping the run.
    """
    try:
        return decode_hub_image(value, ("" if base_dir is None else os.fspath(base_dir),))
    except DataError as e:
        raise EvalError(str(e)) from None
