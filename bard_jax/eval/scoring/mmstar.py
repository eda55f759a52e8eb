"""MMStar (`mmstar`, hub Lin-Chen/MMStar, val split): the MMStar authors' letter match, macro-averaged.

Matching: prediction and gold `answer` are lower-cased, newlines become spaces, both are stripped. The answer is right
when the prediction's first character is the gold letter, or it starts with "(" and its second character is the
letter, or it starts with "option " / "the answer is " and the next character is the letter. Only the first character
is looked at, so "B. a cat" and "(b)" are right for B, "Answer: B" is right only for A (its first character is "a"),
and an empty prediction is wrong.

Aggregation: scores are averaged within each `l2_category` first. Each `category` (the six metric names below) scores
the mean of its l2-category means, and `average` is the mean of all l2-category means across categories (not the
mean of the six category scores, nor of the documents). Values are fractions in [0, 1]. A category with no documents
is left out of the result.
"""

from __future__ import annotations

TASK = "mmstar"
CATEGORIES = (
    "coarse perception",
    "fine-grained perception",
    "instance reasoning",
    "logical reasoning",
    "science & technology",
    "math",
)
METRICS = CATEGORIES + ("average",)
HIGHER_IS_BETTER = dict.fromkeys(METRICS, True)

_PREFIXES = ("option ", "the answer is ")


def _clean(text: str) -> str:
    return text.lower().replace("\n", " ").strip()


def letter_match(prediction: str, answer: str) -> float:
    """1.0 when the prediction names the gold letter by the rule in the module docstring, else 0.0."""
    gold = _clean(answer)
    pred = _clean(prediction)
    if not pred:
        return 0.0
    if pred[0] == gold:
        return 1.0
    if pred[0] == "(":
        return 1.0 if len(pred) > 1 and pred[1] == gold else 0.0
    for prefix in _PREFIXES:
        if pred.startswith(prefix):
            return 1.0 if len(pred) > len(prefix) and pred[len(prefix)] == gold else 0.0
    return 0.0


def process(doc: dict, prediction: str) -> dict:
    """Score one answer; keep its category and l2 category for the macro averages."""
    return {
        "index": doc["index"],
        "category": doc["category"],
        "l2_category": doc["l2_category"],
        "score": letter_match(prediction, doc["answer"]),
    }


def _mean_of_l2_means(records: list[dict]) -> float:
    by_l2: dict[str, list[float]] = {}
    for r in records:
        by_l2.setdefault(r["l2_category"], []).append(r["score"])
    means = [sum(s) / len(s) for s in by_l2.values()]
    return sum(means) / len(means)


def aggregate(records: list[dict]) -> dict[str, float]:
    """One score per category present, plus `average` over every l2 category."""
    if not records:
        raise ValueError("mmstar: cannot aggregate an empty list of records")
    out = {}
    categories = list(dict.fromkeys(r["category"] for r in records))
    for category in categories:
        out[category] = _mean_of_l2_means([r for r in records if r["category"] == category])
    out["average"] = _mean_of_l2_means(records)
    return out
