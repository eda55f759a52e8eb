"""lmms-eval's `exact_match` metric, the form ai2d and realworldqa configure (ignore_case, ignore_punctuation).

Both strings are lower-cased, then every ASCII punctuation character (Python's `string.punctuation`) is deleted, and
the results must be equal. Nothing else is normalised: whitespace is kept, so "b " does not match "b". The metric
is 1.0 or 0.0 per document and the task score is the plain mean (a fraction in [0, 1]).
"""

from __future__ import annotations

import string

_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    """Lower-case and delete ASCII punctuation."""
    return text.lower().translate(_DROP_PUNCTUATION)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0."""
    return 1.0 if normalise(prediction) == normalise(reference) else 0.0


def mean_exact_match(task: str, records: list[dict]) -> dict[str, float]:
    """{"exact_match": mean of the records' exact_match}; `task` names the task in the empty-input error."""
    if not records:
        raise ValueError(f"{task}: cannot aggregate an empty list of records")
    return {"exact_match": sum(r["exact_match"] for r in records) / len(records)}
