"""ChartQA (`chartqa`, hub lmms-lab/ChartQA, test split): relaxed correctness (the ChartQA paper, sec. 5.1).

The prediction is used as given (no filter). Both it and the gold `answer` are read as numbers when Python's float()
accepts them (surrounding whitespace allowed), a trailing "%" (or several) first removed and the value divided by
100 ("12%" -> 0.12). When both are numbers and the gold one is not zero, the answer is right if
|pred - gold| / |gold| <= 0.05 (the tolerance absorbs chart-reading error). Otherwise -- a word answer, an unreadable
prediction, or a gold of 0 -- the two strings must be equal after lower-casing only (no strip: "Yes " is not "yes").
Note "12%" against gold "12" compares 0.12 with 12 and is wrong.

Metrics (each a mean of 0/1, a fraction): `relaxed_overall` over all documents, `relaxed_human_split` over rows whose
`type` is "human_test", `relaxed_augmented_split` over all other rows. A split with no documents is left out of the
result (lmms-eval reports no metric that no document produced).
"""

from __future__ import annotations

TASK = "chartqa"
METRICS = ("relaxed_overall", "relaxed_human_split", "relaxed_augmented_split")
HIGHER_IS_BETTER = dict.fromkeys(METRICS, True)
MAX_RELATIVE_CHANGE = 0.05
HUMAN_TYPE = "human_test"


def to_float(text: str) -> float | None:
    """The number a ChartQA answer spells, percentages as fractions; None when it is not a number."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str, target: str) -> bool:
    """Within 5% of a non-zero numeric target, else a case-insensitive string match."""
    pred_value = to_float(prediction)
    gold_value = to_float(target)
    if pred_value is not None and gold_value:
        return abs(pred_value - gold_value) / abs(gold_value) <= MAX_RELATIVE_CHANGE
    return prediction.lower() == target.lower()


def process(doc: dict, prediction: str) -> dict:
    """Score one answer; keep its split for the aggregate."""
    return {"type": doc["type"], "relaxed": 1.0 if relaxed_correct(prediction, doc["answer"]) else 0.0}


def aggregate(records: list[dict]) -> dict[str, float]:
    """The overall, human-split and augmented-split means."""
    if not records:
        raise ValueError("chartqa: cannot aggregate an empty list of records")
    human = [r["relaxed"] for r in records if r["type"] == HUMAN_TYPE]
    augmented = [r["relaxed"] for r in records if r["type"] != HUMAN_TYPE]
    out = {"relaxed_overall": sum(r["relaxed"] for r in records) / len(records)}
    if human:
        out["relaxed_human_split"] = sum(human) / len(human)
    if augmented:
        out["relaxed_augmented_split"] = sum(augmented) / len(augmented)
    return out
