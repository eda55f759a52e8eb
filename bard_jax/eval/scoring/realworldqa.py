"""RealWorldQA (`realworldqa`, hub lmms-lab/RealWorldQA, test split): exact match after two filters.

The questions carry their own instructions and, for multiple-choice ones, option lines "A. text" inside `question`;
`answer` is a letter or a short free answer (often a number). Filters, in the yaml's order:

1. number words: a prediction that is exactly (case-insensitively) "zero".."ten" becomes its digits ("Two" -> "2");
   anything else, including "two." or "two cars", is left alone.
2. RealWorldQA's MultiChoiceRegexFilter (its yaml regex_pattern and ignore_* arguments are unused by this filter):
   option texts are read from the question with `\\b([A-Z])\\.\\s+([^\\n]*)` and labelled A, B, C... in the order
   found (not by the letter written); the prediction is cleaned by deleting every character that is neither a word
   character nor whitespace, then stripped; the leftmost occurrence of any option text (case-sensitive, alternatives
   tried in option order at each position) in the cleaned prediction gives that option's letter; with no match the
   cleaned prediction itself is the result. An option text with punctuation cannot match a cleaned prediction.
   Questions without option lines build an empty pattern, which matches nothing usable, so the cleaned prediction
   stands.

Metric: lmms-eval `exact_match` (ignore_case, ignore_punctuation) against `answer`, mean over documents (fraction).
(utils.realworldqa_process_results exists in the vendored folder but the yaml does not use it.)
"""

from __future__ import annotations

import re

from bard_jax.eval.scoring.exact_match import exact_match, mean_exact_match

TASK = "realworldqa"
METRICS = ("exact_match",)
HIGHER_IS_BETTER = {"exact_match": True}

NUMBER_WORDS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
OPTION_LINE = re.compile(r"\b([A-Z])\.\s+([^\n]*)")
NOT_WORD_OR_SPACE = re.compile(r"[^\w\s]")


def number_words_filter(prediction: str) -> str:
    """Filter 1: a whole-prediction number word becomes digits."""
    return NUMBER_WORDS.get(prediction.lower(), prediction)


def option_texts(question: str) -> dict[str, str]:
    """Option text -> letter, labelled A, B, ... in order of appearance (a repeated text keeps its last letter)."""
    out: dict[str, str] = {}
    for i, (_, text) in enumerate(OPTION_LINE.findall(question)):
        out[text.strip()] = chr(ord("A") + i)
    return out


def choice_filter(prediction: str, question: str) -> str:
    """Filter 2: the letter of the first option text found in the cleaned prediction, else the cleaned prediction."""
    cleaned = NOT_WORD_OR_SPACE.sub("", prediction).strip()
    texts = [m[1].strip() for m in OPTION_LINE.findall(question)]
    to_letter = option_texts(question)
    m = re.compile("|".join(re.escape(t) for t in texts)).search(cleaned)
    if m and m.group() in to_letter:
        return to_letter[m.group()]
    return cleaned


def apply_filters(prediction: str, question: str) -> str:
    """Both filters in the yaml's order."""
    return choice_filter(number_words_filter(prediction), question)


def process(doc: dict, prediction: str) -> dict:
    """Filter, then compare case- and punctuation-insensitively with `answer`."""
    filtered = apply_filters(prediction, doc["question"])
    return {"filtered": filtered, "target": doc["answer"], "exact_match": exact_match(filtered, doc["answer"])}


def aggregate(records: list[dict]) -> dict[str, float]:
    """{"exact_match": fraction of documents matched}."""
    return mean_exact_match(TASK, records)
