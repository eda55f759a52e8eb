"""MMMU validation split (`mmmu_val`, hub dataset lmms-lab/MMMU): accuracy with MMMU's answer parser.

Multiple-choice questions: the prediction is parsed into an option letter (`mmmu_parse.parse_multi_choice`) and is
right when it equals `answer`. Open questions: the prediction is parsed into candidates
(`mmmu_parse.parse_open_response`) and judged by MMMU's open rule -- but through the vendored lmms-eval glue, which
keeps only the first candidate, turns it into a string, and hands that string to the judge where the judge expects a
list. The judge then walks the string's characters, so a candidate is "right" only when a normalised gold string is
contained in a single character. Normalised golds are numbers, strings of 2+ characters, or the empty string, so an
open question counts as right only when its gold answer is blank and the prediction is not; in practice every open
question scores 0 under the release's scorer. We reproduce that (it is what the release's reported number measured)
and keep the intended judgement in the record as `open_correct_mmmu` for reference; it does not enter `accuracy`.

The first candidate is taken from a set in the vendored code (order depends on the hash seed); here it is the first
by appearance. That choice cannot change the score (only emptiness matters, see above), only the logged `parsed_pred`.

`accuracy` is the instance-level accuracy over subjects (the id's middle part, e.g. "Art_Theory" in
"validation_Art_Theory_12"), rounded to 5 decimals, as the vendored aggregate returns it: a fraction in [0, 1].
"""

from __future__ import annotations

import re

from bard_jax.eval.scoring import mmmu_parse

TASK = "mmmu_val"
METRICS = ("accuracy",)
HIGHER_IS_BETTER = {"accuracy": True}


def subject_of(doc_id: str) -> str:
    """The subject in an MMMU id "<split>_<Subject_Name>_<n>"; an id not of that shape is an error, as upstream."""
    split = doc_id.split("_")[0]
    m = re.match(rf"^{re.escape(split)}_(.+?)_\d+$", doc_id)
    if m is None:
        raise ValueError(f"mmmu_val: document id {doc_id!r} is not '<split>_<subject>_<number>'")
    return m.group(1)


def process(doc: dict, prediction: str) -> dict:
    """Parse one prediction and judge it; the record carries the subject for the aggregate."""
    doc_id = str(doc["id"])
    answer = doc["answer"]
    record = {
        "id": doc_id,
        "subject": subject_of(doc_id),
        "question_type": doc["question_type"],
        "answer": answer,
    }
    if doc["question_type"] == "multiple-choice":
        parsed = mmmu_parse.parse_multi_choice(prediction, mmmu_parse.options_of(doc), doc_id)
        record["parsed_pred"] = parsed
        record["correct"] = mmmu_parse.eval_multi_choice(answer, parsed)
    else:
        candidates = mmmu_parse.parse_open_response(prediction)
        parsed = str(candidates[0]) if candidates else ""
        record["parsed_pred"] = parsed
        # The vendored glue: the judge iterates the candidate string, i.e. its characters.
        record["correct"] = mmmu_parse.eval_open(answer, list(parsed))
        record["open_correct_mmmu"] = mmmu_parse.eval_open(answer, candidates)
    return record


def aggregate(records: list[dict]) -> dict[str, float]:
    """{"accuracy": instance-level accuracy over subjects, rounded to 5 decimals}."""
    if not records:
        raise ValueError("mmmu_val: cannot aggregate an empty list of records")
    return {"accuracy": mmmu_parse.instance_accuracy(records, "subject")}
