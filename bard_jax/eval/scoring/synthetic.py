"""The embedded synthetic task (`synthetic`, the Mini-BARD study's held-out set): exact match and token accuracy,
overall and per question type.

The task's tokenizer is word-level (every word and punctuation mark is one token, decoded joined by single spaces),
so the answer's words are its tokens. A document is an exact match when the cleaned prediction equals the answer
exactly (the runner cut it at the first EOS, so an answer followed by anything else is wrong; the release's
post-processing drops a final "." but leaves the space before it, so "red ." is not "red"). Token accuracy counts the
answer's tokens plus its end: position i < n is right when the prediction's i-th word is the answer's, and the end
is right when the prediction has exactly n words (the EOS came right after the answer).

Metrics: `exact_match`, `token_accuracy` (fractions), and `exact_match/<qtype>`, `token_accuracy/<qtype>`,
`n/<qtype>` per question type.
"""

from __future__ import annotations

TASK = "synthetic"
METRICS = ("exact_match", "token_accuracy")
HIGHER_IS_BETTER = {"exact_match": True, "token_accuracy": True}


def process(doc: dict, prediction: str) -> dict:
    answer = doc["answer"].split()
    words = prediction.split()
    hits = sum(i < len(words) and words[i] == a for i, a in enumerate(answer)) + (len(words) == len(answer))
    return {"qtype": doc["qtype"], "exact": prediction == doc["answer"],
            "token_accuracy": hits / (len(answer) + 1)}


def aggregate(records: list[dict]) -> dict[str, float]:
    if not records:
        raise ValueError(f"{TASK}: no documents to aggregate")
    metrics = {"exact_match": sum(r["exact"] for r in records) / len(records),
               "token_accuracy": sum(r["token_accuracy"] for r in records) / len(records)}
    for qtype in sorted({r["qtype"] for r in records}):
        group = [r for r in records if r["qtype"] == qtype]
        metrics[f"exact_match/{qtype}"] = sum(r["exact"] for r in group) / len(group)
        metrics[f"token_accuracy/{qtype}"] = sum(r["token_accuracy"] for r in group) / len(group)
        metrics[f"n/{qtype}"] = float(len(group))
    return metrics
