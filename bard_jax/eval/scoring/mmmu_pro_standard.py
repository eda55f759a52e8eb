"""MMMU-Pro, standard 10-option set, direct answers (`mmmu_pro_standard`, hub MMMU/MMMU_Pro "standard (10 options)",
test split): accuracy with MMMU's multiple-choice parser.

Every question is multiple-choice. The prediction is parsed into an option letter among as many letters as the row
has options (up to A..J) by `mmmu_parse.parse_multi_choice`; it is right when it equals `answer`. With ten letters
the parser's "letter followed by a space" step also catches words such as "I " (option I) -- the last letter
written as a separate word wins, exactly as in the vendored code. The no-parse fallback is a seeded choice (see
`mmmu_parse`). `accuracy` is the instance-level accuracy over the `subject` column, rounded to 5 decimals (fraction).
"""

from __future__ import annotations

from bard_jax.eval.scoring import mmmu_parse

TASK = "mmmu_pro_standard"
METRICS = ("accuracy",)
HIGHER_IS_BETTER = {"accuracy": True}


def process(doc: dict, prediction: str) -> dict:
    """Parse one prediction into a letter and compare it with the gold letter."""
    doc_id = str(doc["id"])
    parsed = mmmu_parse.parse_multi_choice(prediction, mmmu_parse.options_of(doc), doc_id)
    return {
        "id": doc_id,
        "subject": doc["subject"],
        "answer": doc["answer"],
        "parsed_pred": parsed,
        "correct": mmmu_parse.eval_multi_choice(doc["answer"], parsed),
    }


def aggregate(records: list[dict]) -> dict[str, float]:
    """{"accuracy": instance-level accuracy over subjects, rounded to 5 decimals}."""
    if not records:
        raise ValueError("mmmu_pro_standard: cannot aggregate an empty list of records")
    return {"accuracy": mmmu_parse.instance_accuracy(records, "subject")}
