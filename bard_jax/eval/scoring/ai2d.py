"""AI2D (`ai2d`, hub lmms-lab/ai2d, test split, the default "mcq" format): exact match on the option letter.

Target: the dataset stores `answer` as the 0-based index of the right option (a digit string such as "2"); the target
is that option's letter ("C"). Filter ("flexible-extract", ai2d's own MultiChoiceRegexFilter): when the prediction
starts, after optional whitespace, with a capital letter and a period ("B. a cell" -> "B"), the letter is kept;
otherwise the prediction passes unchanged. Metric: lmms-eval `exact_match` with ignore_case and ignore_punctuation
(`exact_match.normalise`), so "(B)", "b" and "B)" all match "B" while "B " (trailing space), "The answer is B" or the
option text itself do not. (The yaml's regex_pattern/ignore_* arguments to the filter are unused by that filter.)
`exact_match` is the mean over documents, a fraction.
"""

from __future__ import annotations

import re

from bard_jax.eval.scoring.exact_match import exact_match, mean_exact_match

TASK = "ai2d"
METRICS = ("exact_match",)
HIGHER_IS_BETTER = {"exact_match": True}

# The only extraction the ai2d filter performs: a leading "X." gives the letter X.
LEADING_LETTER = re.compile(r"^\s*([A-Z])\.")


def target_letter(doc: dict) -> str:
    """The letter of option number int(answer): index 0 is "A"."""
    n = len(doc["options"])
    index = int(doc["answer"])
    if not 0 <= index < n:
        raise ValueError(f"ai2d: answer index {doc['answer']!r} is outside the {n} options")
    return chr(ord("A") + index)


def apply_filter(prediction: str) -> str:
    """The letter of a leading "X." when there is one, else the prediction untouched."""
    m = LEADING_LETTER.match(prediction)
    return m.group(1) if m else prediction


def process(doc: dict, prediction: str) -> dict:
    """Filter, then compare case- and punctuation-insensitively with the target letter."""
    target = target_letter(doc)
    filtered = apply_filter(prediction)
    return {"filtered": filtered, "target": target, "exact_match": exact_match(filtered, target)}


def aggregate(records: list[dict]) -> dict[str, float]:
    """{"exact_match": fraction of documents matched}."""
    return mean_exact_match(TASK, records)
