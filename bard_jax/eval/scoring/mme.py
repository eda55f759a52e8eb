"""MME (`mme`, hub lmms-lab/MME, test split): yes/no questions asked in pairs about each image.

Parsing (MME's own "Otter" rule): lower-case the prediction, strip it, delete every period. "yes"/"no" are taken as
is; a single character "y"/"n" means yes/no and any other single character is "other"; a longer answer is "yes" when
its first four characters contain "yes", else "no" when they contain "no", else "other". So "Yes, it is" is yes,
"no." is no, "Not really" is no (its first four characters hold "no") and "I think yes" is other. The gold answer
gets the same lower/strip/period treatment. A question scores 1 when the parsed label equals the gold label.

Aggregation: questions are grouped by category and, inside a category, by `question_id` (the image file, shared by
its two questions). Each image scores acc + acc_plus where acc = 100 * (fraction of its two questions right) and
acc_plus = 100 if both are right; a category scores the mean over its images (0..200); the perception score is the
sum over the ten perception categories and the cognition score the sum over the four others. Units are MME points.
Each image must have exactly two answered questions, as upstream asserts. `mme_sum` is perception + cognition.
A group with no records at all is left out of the result (lmms-eval reports no metric that no document produced).
"""

from __future__ import annotations

TASK = "mme"
METRICS = ("mme_perception_score", "mme_cognition_score", "mme_sum")
HIGHER_IS_BETTER = dict.fromkeys(METRICS, True)

PERCEPTION_CATEGORIES = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION_CATEGORIES = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def parse_yes_no(text: str) -> str:
    """The label ("yes", "no" or "other") of a free-text answer, by the rule in the module docstring."""
    t = text.lower().strip().replace(".", "")
    if t in ("yes", "no"):
        return t
    if len(t) == 1:
        return {"y": "yes", "n": "no"}.get(t, "other")
    head = t[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def group_of(category: str) -> str:
    """The metric a category feeds: perception for the ten perception categories, cognition for anything else."""
    return "mme_perception_score" if category in PERCEPTION_CATEGORIES else "mme_cognition_score"


def process(doc: dict, prediction: str) -> dict:
    """Score one question 1.0 / 0.0 and keep what the pairwise aggregate needs."""
    gold = doc["answer"].lower().strip().replace(".", "")
    if gold not in ("yes", "no"):
        raise ValueError(f"mme: gold answer {doc['answer']!r} of {doc['question_id']!r} is not yes/no")
    category = doc["category"]
    parsed = parse_yes_no(prediction)
    return {
        "question_id": doc["question_id"],
        "category": category,
        "group": group_of(category),
        "parsed": parsed,
        "score": 1.0 if parsed == gold else 0.0,
    }


def _group_score(records: list[dict]) -> float:
    """Sum over categories of the mean over images of acc + acc_plus."""
    by_category: dict[str, dict[str, list[float]]] = {}
    for r in records:
        by_category.setdefault(r["category"], {}).setdefault(r["question_id"], []).append(r["score"])
    total = 0.0
    for category, images in by_category.items():
        category_total = 0.0
        for question_id, scores in images.items():
            if len(scores) != 2:
                raise ValueError(
                    f"mme: image {question_id!r} ({category}) has {len(scores)} scored questions; MME scores pairs"
                )
            acc = sum(scores) / len(scores) * 100.0
            acc_plus = 100.0 if sum(scores) == 2 else 0.0
            category_total += acc + acc_plus
        total += category_total / len(images)
    return total


def aggregate(records: list[dict]) -> dict[str, float]:
    """Perception and cognition points (each group present) and their sum."""
    if not records:
        raise ValueError("mme: cannot aggregate an empty list of records")
    out = {}
    for group in ("mme_perception_score", "mme_cognition_score"):
        members = [r for r in records if r["group"] == group]
        if members:
            out[group] = _group_score(members)
    out["mme_sum"] = sum(out.values())
    return out
