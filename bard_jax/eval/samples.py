"""OUT/<task>/samples.jsonl: one JSON line per document, appended as batches finish, so that an interrupted run
keeps what it decoded and a rerun goes on from there.

A line: doc_id, prediction, target, record (the scorer's per-document record), nfe, generated_tokens,
tokens_per_forward, denoising_forwards (null for a document that was not decoded), seconds (its share of its batch's
decode call: prefill and decoding, compilation included unless the run warms up; image preprocessing excluded) and
error (why its images could not be used, else null).
"""

from __future__ import annotations

import json
import os
from typing import Any

from bard_jax.eval.errors import EvalError


def read_samples(path: str, *, repair: bool = False) -> list[dict[str, Any]]:
    """The lines of a samples file ([] when there is none).

    The last line may be torn (the run was killed while writing it): it is dropped, and with `repair` also cut from
    the file so that appending goes on after the last whole line. Any other unreadable line, or a doc_id twice, is
    an EvalError naming the line.
    """
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1  # whole lines end with a newline; anything after the last one is torn
    lines, seen = [], set()
    for number, raw in enumerate(data[:end].splitlines(), 1):
        try:
            line = json.loads(raw)
            doc_id = line["doc_id"]
        except (ValueError, KeyError, TypeError) as e:
            raise EvalError(f"{path}:{number}: not a samples line ({e}); remove the file to decode the task "
                            "again") from None
        if doc_id in seen:
            raise EvalError(f"{path}:{number}: doc_id {doc_id} appears twice")
        seen.add(doc_id)
        lines.append(line)
    if repair and end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return lines


class SamplesWriter:
    """Appends lines to a samples file, flushed after every batch (a killed run loses at most the batch in flight)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def write(self, lines: list[dict[str, Any]]) -> None:
        self._file.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SamplesWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
