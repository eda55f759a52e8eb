"""MMMU's answer parsing and judging, shared by `mmmu_val` and `mmmu_pro_standard`.

These are the MMMU benchmark's own rules (its eval_utils.py), as the release's vendored lmms-eval applies them. The
model answers free text; a parser turns it into one option letter (multiple-choice) or a list of candidate strings and
numbers (open questions), and a judge compares that with the gold answer. The parser is deliberately lenient about
format because small models rarely answer with a bare letter; the order of its steps decides ambiguous answers, so it
is reproduced step for step.

One deviation: when the multiple-choice parser finds nothing it picks a random option. The vendored code draws from
Python's global `random` module, whose state depends on every earlier draw of the whole run, so the pick cannot be
reproduced per document. Here the draw comes from a `random.Random` seeded by a SHA-256 of the document id, which
makes the score a pure function of (document, prediction) while keeping the same uniform-choice fallback.
"""

from __future__ import annotations

import ast
import hashlib
import random
import re
from collections.abc import Sequence

# Characters trimmed from both ends of a multiple-choice answer, one character kind after another (so ".A," keeps
# nothing but "A" while "A,." keeps its comma: the comma pass runs before the period pass).
_MC_TRIM_ORDER = (",", ".", "!", "?", ";", ":", "'")

# Words after which an open answer's final value usually follows; the tail after the last one is a candidate.
_OPEN_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
# A tail that is only one of these marks is not an answer.
_TRIVIAL_TAILS = frozenset({":", ",", ".", "!", "?", ";", "'"})

# Numbers in three spellings, searched independently and concatenated in this order (duplicates are fine: the
# candidate list is de-duplicated after normalisation).
_NUM_WITH_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")  # 1,234,567
_NUM_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")  # 1.5e-3
# 12, 3.25, .5 -- but not the mantissa of a scientific number nor a digit run that a comma or digit continues.
_NUM_PLAIN = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")


def options_of(doc: dict) -> list[str]:
    """The option texts of an MMMU / MMMU-Pro row; the hub stores them as a string-encoded Python list."""
    raw = doc["options"]
    options = ast.literal_eval(raw) if isinstance(raw, str) else list(raw)
    return [str(o) for o in options]


def choice_letters(n: int) -> list[str]:
    """Option i is labelled with the i-th capital letter: A, B, ... (MMMU-Pro standard goes up to J)."""
    return [chr(ord("A") + i) for i in range(n)]


def fallback_choice(letters: Sequence[str], doc_id: str) -> str:
    """The deterministic stand-in for the vendored unseeded `random.choice` (see the module docstring)."""
    seed = int.from_bytes(hashlib.sha256(str(doc_id).encode("utf-8")).digest()[:8], "big")
    return random.Random(seed).choice(list(letters))


def _last_position(positions: list[int]) -> int:
    """Index of the largest position, the first one on ties (numpy.argmax's rule, which the vendored code uses)."""
    best = 0
    for i, p in enumerate(positions):
        if p > positions[best]:
            best = i
    return best


def parse_multi_choice(response: str, options: Sequence[str], doc_id: str) -> str:
    """The option letter a free-text answer names, by MMMU's rules, tried in this order:

    1. trim `,.!?;:'` from both ends (one kind at a time) and pad the text with a space on each side;
    2. letters written in parentheses, "(B)";
    3. else letters followed by a space, "B " (case-sensitive, and note only the space after is required);
    4. else letters followed by a period, "B.";
    5. else, only if the padded text has more than 5 whitespace-separated words, options whose text occurs in the
       answer (case-insensitive);
    6. else a random option (deterministic here, see the module docstring).
    With several candidates the one written last wins: the last "(X)" for step 2, the last " X " for steps 3-4 (a
    candidate never written that way counts as position -1, so if none is, the first candidate wins), and the last
    occurrence of the option text for step 5.
    """
    letters = choice_letters(len(options))
    text = response
    for ch in _MC_TRIM_ORDER:
        text = text.strip(ch)
    text = f" {text} "

    by_letter = True
    in_brackets = False
    candidates = [c for c in letters if f"({c})" in text]
    if candidates:
        in_brackets = True
    if not candidates:
        candidates = [c for c in letters if f"{c} " in text]
    if not candidates:
        candidates = [c for c in letters if f"{c}." in text]
    if not candidates and len(text.split()) > 5:
        lowered = text.lower()
        candidates = [c for c, opt in zip(letters, options) if opt.lower() in lowered]
        by_letter = not candidates

    if not candidates:
        return fallback_choice(letters, doc_id)
    if len(candidates) == 1:
        return candidates[0]
    if not by_letter:
        lowered = text.lower()
        positions = [lowered.rfind(options[letters.index(c)].lower()) for c in candidates]
    elif in_brackets:
        positions = [text.rfind(f"({c})") for c in candidates]
    else:
        positions = [text.rfind(f" {c} ") for c in candidates]
    return candidates[_last_position(positions)]


def extract_numbers(text: str) -> list[str]:
    """Every number written in `text`: comma-grouped ones, then scientific ones, then plain ones."""
    return _NUM_WITH_COMMAS.findall(text) + _NUM_SCIENTIFIC.findall(text) + _NUM_PLAIN.findall(text)


def is_number(text: str) -> bool:
    """Whether Python's float() reads `text` once thousands commas are removed."""
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def normalize(text: str) -> list[str | float]:
    """MMMU's canonical forms of one answer string.

    A number becomes its float value rounded to 2 decimals (so "1,000" and "1000.001" both become 1000.0); any other
    text is lower-cased, and a single character c becomes the two strings " c" and "c " so that it can only match as
    a separate word when searched for inside a longer answer.
    """
    text = text.strip()
    if is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    if len(text) == 1:
        return [" " + text, text + " "]
    return [text]


def _key_tails(response: str) -> list[str]:
    """The parts of an open answer most likely to hold its final value.

    The answer is stripped, its end periods removed, lower-cased, and split into lines. (MMMU also splits at ". "
    before a capital letter, but the text is already lower-cased then, so that split never fires.) For each line, the
    shortest tail after an indicator word ("is ", "so ", "therefore ", ...; the last line also accepts "=") is kept
    unless it is empty or a lone punctuation mark. With no tail anywhere, the whole normalised answer is the tail.
    As in MMMU, an empty tail found first is replaced by the next indicator's tail whatever its length.
    """
    text = response.strip().strip(".").lower()
    lines = text.split("\n")
    tails = []
    for i, line in enumerate(lines):
        indicators = _OPEN_INDICATORS + (("=",) if i == len(lines) - 1 else ())
        shortest = None
        for indicator in indicators:
            if indicator not in line:
                continue
            tail = line.split(indicator)[-1].strip()
            if not shortest or len(tail) < len(shortest):
                shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL_TAILS:
            tails.append(shortest)
    return tails or [text]


def parse_open_response(response: str) -> list[str | float]:
    """Candidate answers of an open question: the key tails and every number in them, normalised, de-duplicated.

    MMMU de-duplicates through a Python set, whose order for strings changes with the interpreter's hash seed; here
    duplicates are dropped keeping first occurrences (tails first, then their numbers), so the order is stable.
    """
    tails = _key_tails(response)
    raw = list(tails)
    for tail in tails:
        raw.extend(extract_numbers(tail))
    out: list[str | float] = []
    for item in raw:
        for norm in normalize(item):
            if norm not in out:
                out.append(norm)
    return out


def eval_multi_choice(gold: str | list[str], pred: str) -> bool:
    """A multiple-choice answer is right when it equals the gold letter (or one of them, for a list of golds)."""
    if isinstance(gold, list):
        return pred in gold
    return gold == pred


def eval_open(gold: str | list[str], preds: Sequence[str | float]) -> bool:
    """MMMU's open-question judge: a string candidate is right when some normalised gold string occurs inside it; a
    float candidate is right when it equals a normalised gold number (both rounded to 2 decimals)."""
    golds = gold if isinstance(gold, list) else [gold]
    norm_golds = [n for g in golds for n in normalize(g)]
    for pred in preds:
        if isinstance(pred, str):
            if any(isinstance(n, str) and n in pred for n in norm_golds):
                return True
        elif pred in norm_golds:
            return True
    return False


def instance_accuracy(records: list[dict], group_key: str) -> float:
    """lmms-eval's MMMU overall accuracy: the accuracy of each group (subject), weighted by the group's size, summed
    over groups in order of first appearance, divided by the total, and rounded to 5 decimals.

    This equals (number correct) / (number of records) up to float rounding; the per-group form is kept so the float
    result is the vendored one bit for bit.
    """
    groups: dict[str, list[bool]] = {}
    for r in records:
        groups.setdefault(r[group_key], []).append(bool(r["correct"]))
    weighted = 0.0
    total = 0
    for flags in groups.values():
        weighted += (sum(flags) / len(flags)) * len(flags)
        total += len(flags)
    return round(weighted / total, 5)
