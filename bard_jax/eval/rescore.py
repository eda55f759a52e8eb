"""The `score` command: score a predictions JSONL against a task's split, without a model.

Each line holds `doc_id` (the row's index in the split, as samples.jsonl has it) and `prediction`; other keys are
ignored, so a run's samples.jsonl is itself a predictions file. Every doc id must be a row of the split and appear
once; the documents without a prediction are left out of the metrics.
"""

from __future__ import annotations

import json
import os
from typing import Any

from bard_jax.eval.errors import EvalError

SHOWN = 10  # doc ids named in an error at most


def _named(ids: list[Any]) -> str:
    more = f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else ""
    return ", ".join(map(repr, ids[:SHOWN])) + more


def read_predictions(path: str) -> dict[int, str]:
    """{doc_id: prediction} from a JSONL file; EvalError naming a malformed line or the repeated doc ids."""
    if not os.path.isfile(path):
        raise EvalError(f"--predictions: file not found: {path}")
    preds: dict[int, str] = {}
    repeated: list[Any] = []
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                doc_id, prediction = line["doc_id"], line["prediction"]
            except (ValueError, KeyError, TypeError) as e:
                raise EvalError(f"{path}:{number}: not a predictions line with doc_id and prediction ({e})") from None
            if isinstance(doc_id, bool) or not isinstance(doc_id, int) or not isinstance(prediction, str):
                raise EvalError(f"{path}:{number}: doc_id must be an int and prediction a string, got "
                                f"{doc_id!r} and {prediction!r}")
            if doc_id in preds:
                repeated.append(doc_id)
            preds[doc_id] = prediction
    if repeated:
        raise EvalError(f"{path}: duplicate doc ids {_named(sorted(set(repeated)))}")
    if not preds:
        raise EvalError(f"{path}: no predictions")
    return preds


def score_predictions(task_name: str, root: str, path: str) -> tuple[dict[str, float], int, int]:
    """(metrics, documents scored, documents in the split) for the predictions file at `path`."""
    from bard_jax.eval.data import read_docs, text_fields
    from bard_jax.eval.scoring import SCORERS
    from bard_jax.eval.tasks import get_task

    task = get_task(task_name)
    preds = read_predictions(path)
    fields: dict[int, dict] = {}
    n_split = 0
    for doc_id, doc in read_docs(root, task):
        n_split += 1
        if doc_id in preds:
            fields[doc_id] = text_fields(doc)
    unknown = sorted(d for d in preds if d not in fields)
    if unknown:
        raise EvalError(f"{path}: doc ids not in the {task.name} split ({n_split} rows, ids 0..{n_split - 1}): "
                        f"{_named(unknown)}")
    scorer = SCORERS[task.name]
    records = [scorer.process(fields[d], preds[d]) for d in sorted(preds)]
    return scorer.aggregate(records), len(records), n_split
