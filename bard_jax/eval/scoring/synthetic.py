"""The embedded synthetic task (`synthetic`, the Mini-BARD study's held-out set): exact match and token accuracy,
overall and per question type.

The task's tokenizer is word-level (every word and punctuation mark is one token, decoded joined by single spaces),
so the answer's words are its tokens. A document is an exact match when the cleaned prediction equals the answer
exactly (the runner cut it at the first EOS, so an answer followed by anything else is wrong; the release's
post-processing drops a final "." but leaves the space before it, so "red ." is not "red"). Token accuracy counts the
answer's tokens plus its end: position i < n is right when the prediction's i-th word is the answer's, and the end
is right when the prediction has exactly n words (the EOS came right after the answer).

Field accuracy scores a structured answer by its fields rather than its token positions, so that one missing object
does not make every later token wrong. The answer is split into entries (`{ ... }` groups; an answer without braces
is one entry); an entry's fields are its words other than punctuation (`[ ] { } : , . ?`). Entry k of the prediction
is compared with entry k of the answer, field by field at the same place; the score is the matching fields over the
answer's fields plus the fields of any extra entries the prediction has. A short answer ("top left", "big red solid
circle") is one entry, so its field accuracy is the fraction of its words right.

An answer is long when it has at least `LONG_WORDS` (10) words: the list answers of both synthetic tasks (15 to 54
words); every other answer has at most 4.

Metrics: `exact_match`, `token_accuracy`, `field_accuracy` (fractions) overall, for `short` and `long` answers
(`exact_match/short`, ...), and per question type (`exact_match/<qtype>`, `token_accuracy/<qtype>`,
`field_accuracy/<qtype>`, `n/<qtype>`).
"""

from __future__ import annotations

TASK = "synthetic"
METRICS = ("exact_match", "token_accuracy", "field_accuracy")
HIGHER_IS_BETTER = {m: True for m in METRICS}
LONG_WORDS = 10
PUNCTUATION = frozenset("[]{}:,.?")


def entries(text: str) -> list[list[str]]:
    """The fields of each entry of an answer (see the module docstring)."""
    groups, current, braced = [], [], False
    for w in text.split():
        if w == "{":
            braced = True
            current = []
        elif w == "}" and braced:
            groups.append(current)
            braced = False
        elif w not in PUNCTUATION:
            current.append(w)
    if not groups or braced:  # no braces (a short answer), or an entry left open at the end
        groups.append(current)
    return groups


def field_accuracy(prediction: str, answer: str) -> float:
    want, got = entries(answer), entries(prediction)
    hits = sum(i < len(g) and g[i] == f for w, g in zip(want, got) for i, f in enumerate(w))
    total = sum(len(w) for w in want) + sum(len(g) for g in got[len(want):])
    return hits / max(total, 1)


def is_long(answer: str) -> bool:
    return len(answer.split()) >= LONG_WORDS


def process(doc: dict, prediction: str) -> dict:
    answer = doc["answer"].split()
    words = prediction.split()
    hits = sum(i < len(words) and words[i] == a for i, a in enumerate(answer)) + (len(words) == len(answer))
    return {"qtype": doc["qtype"], "exact": prediction == doc["answer"], "long": is_long(doc["answer"]),
            "token_accuracy": hits / (len(answer) + 1), "field_accuracy": field_accuracy(prediction, doc["answer"])}


def _means(records: list[dict], suffix: str = "") -> dict[str, float]:
    return {"exact_match" + suffix: sum(r["exact"] for r in records) / len(records),
            "token_accuracy" + suffix: sum(r["token_accuracy"] for r in records) / len(records),
            "field_accuracy" + suffix: sum(r["field_accuracy"] for r in records) / len(records)}


def aggregate(records: list[dict]) -> dict[str, float]:
    if not records:
        raise ValueError(f"{TASK}: no documents to aggregate")
    metrics = _means(records)
    for length in ("short", "long"):
        group = [r for r in records if r["long"] == (length == "long")]
        if group:
            metrics.update(_means(group, f"/{length}"), **{f"n/{length}": float(len(group))})
    for qtype in sorted({r["qtype"] for r in records}):
        group = [r for r in records if r["qtype"] == qtype]
        metrics.update(_means(group, f"/{qtype}"), **{f"n/{qtype}": float(len(group))})
    return metrics
