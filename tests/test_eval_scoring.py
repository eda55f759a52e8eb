"""The seven benchmark scorers against hand-derived cases.

Every expected value below is worked out by hand from the rule as the release's vendored lmms-eval states it (the
derivation sits next to the case), not read back from the code under test.
"""

from __future__ import annotations

import json

import pytest

from bard_jax.eval.scoring import SCORERS, ai2d, chartqa, mme, mmmu_parse, mmmu_pro_standard, mmmu_val, mmstar
from bard_jax.eval.scoring import realworldqa as rwqa

# --------------------------------------------------------------------------------------------------------------------
# registry and shared contract


def test_registry_names_the_seven_tasks_and_the_synthetic_one():
    assert set(SCORERS) == {"mme", "ai2d", "chartqa", "mmstar", "realworldqa", "mmmu_val", "mmmu_pro_standard",
                            "synthetic"}
    for name, module in SCORERS.items():
        assert module.TASK == name
        assert callable(module.process) and callable(module.aggregate)
        assert set(module.HIGHER_IS_BETTER) == set(module.METRICS)


@pytest.mark.parametrize("task", sorted(SCORERS))
def test_aggregate_of_nothing_raises_naming_the_task(task):
    with pytest.raises(ValueError, match=task):
        SCORERS[task].aggregate([])


_ONE_DOC = {
    "mme": ({"question_id": "count/1.png", "category": "count", "answer": "Yes", "question": "q"}, "Yes"),
    "ai2d": ({"question": "q", "options": ["a", "b"], "answer": "0"}, "A"),
    "chartqa": ({"question": "q", "answer": "3", "type": "human_test"}, "3"),
    "mmstar": ({"index": 7, "question": "q", "answer": "A", "category": "math", "l2_category": "geometry"}, "A"),
    "realworldqa": ({"question": "q\nA. x y\nB. z w", "answer": "A"}, "A"),
    "mmmu_val": (
        {
            "id": "validation_Math_3",
            "question": "q",
            "options": "['1', '2']",
            "answer": "A",
            "question_type": "multiple-choice",
        },
        "A",
    ),
    "mmmu_pro_standard": ({"id": "test_Math_1", "subject": "Math", "options": "['1', '2']", "answer": "B"}, "B"),
    "synthetic": ({"question": "q", "answer": "top left", "qtype": "where"}, "top left"),
}


@pytest.mark.parametrize("task", sorted(SCORERS))
def test_records_are_json_plain(task):
    doc, pred = _ONE_DOC[task]
    record = SCORERS[task].process(doc, pred)
    assert json.loads(json.dumps(record)) == record


# --------------------------------------------------------------------------------------------------------------------
# MME


@pytest.mark.parametrize(
    "text,label",
    [
        ("Yes", "yes"),
        ("no.", "no"),  # periods deleted -> "no"
        (" YES. ", "yes"),  # lower + strip + no periods -> "yes"
        ("Yes, it is", "yes"),  # first four chars "yes," hold "yes"
        ("Not really", "no"),  # first four chars "not " hold "no"
        ("nothing", "no"),
        ("y", "yes"),
        ("N", "no"),
        ("x", "other"),  # one character that is neither y nor n
        ("I think yes", "other"),  # "i th" holds neither
        ("The answer is no", "other"),  # "the " holds neither
        ("", "other"),
    ],
)
def test_mme_yes_no_parsing(text, label):
    assert mme.parse_yes_no(text) == label


def _mme_doc(qid, category, answer):
    return {"question_id": qid, "category": category, "answer": answer, "question": "Is it? Please answer yes or no."}


def test_mme_pairwise_points():
    docs = [
        # existence/e1: both right -> acc 100 + acc_plus 100 = 200
        (_mme_doc("existence/e1.png", "existence", "Yes"), "Yes"),
        (_mme_doc("existence/e1.png", "existence", "No"), "No, there is not."),
        # existence/e2: one of two right -> acc 50 + acc_plus 0 = 50   => existence = (200 + 50) / 2 = 125
        (_mme_doc("existence/e2.png", "existence", "Yes"), "yes."),
        (_mme_doc("existence/e2.png", "existence", "No"), "Maybe"),
        # OCR/o1: none right ("other" never matches) -> 0                  => OCR = 0
        (_mme_doc("OCR/o1.png", "OCR", "Yes"), "No"),
        (_mme_doc("OCR/o1.png", "OCR", "No"), "unclear"),
        # code_reasoning/c1: both right -> 200                              => cognition = 200
        (_mme_doc("code_reasoning/c1.png", "code_reasoning", "No"), "n"),
        (_mme_doc("code_reasoning/c1.png", "code_reasoning", "Yes"), "Y"),
    ]
    out = mme.aggregate([mme.process(d, p) for d, p in docs])
    # perception = existence 125 + OCR 0 = 125; cognition 200; sum 325
    assert out == {"mme_perception_score": 125.0, "mme_cognition_score": 200.0, "mme_sum": 325.0}


def test_mme_only_perception_reports_no_cognition():
    docs = [(_mme_doc("count/1.png", "count", "Yes"), "Yes"), (_mme_doc("count/1.png", "count", "No"), "Yes")]
    # count/1: one right -> 50 + 0 = 50 -> count = 50
    assert mme.aggregate([mme.process(d, p) for d, p in docs]) == {"mme_perception_score": 50.0, "mme_sum": 50.0}


def test_mme_unpaired_image_and_bad_gold_raise():
    with pytest.raises(ValueError, match="pairs"):
        mme.aggregate([mme.process(_mme_doc("count/1.png", "count", "Yes"), "Yes")])
    with pytest.raises(ValueError, match="yes/no"):
        mme.process(_mme_doc("count/1.png", "count", "Maybe"), "Yes")


# --------------------------------------------------------------------------------------------------------------------
# AI2D

_AI2D_DOC = {"question": "Which one eats plants?", "options": ["cat", "deer", "hawk", "fish"], "answer": "1"}


@pytest.mark.parametrize(
    "pred,hit",
    [
        ("B", 1.0),
        ("b", 1.0),  # ignore_case
        ("(B)", 1.0),  # no leading "X." so unfiltered; punctuation dropped -> "b"
        ("B)", 1.0),
        ("B. deer", 1.0),  # leading "B." -> "B"
        ("  B.", 1.0),  # leading whitespace allowed before "B."
        ("B ", 0.0),  # whitespace is not normalised: "b " != "b"
        ("deer", 0.0),  # option text is not mapped to its letter
        ("The answer is B", 0.0),
        ("A. B", 0.0),  # leading "A." wins
        ("C", 0.0),
    ],
)
def test_ai2d_letter_filter_and_exact_match(pred, hit):
    assert ai2d.process(_AI2D_DOC, pred)["exact_match"] == hit


def test_ai2d_target_is_the_letter_of_the_stored_index():
    assert ai2d.target_letter(_AI2D_DOC) == "B"  # "1" -> second option -> B
    assert ai2d.target_letter({**_AI2D_DOC, "answer": 3}) == "D"  # an int index works the same
    assert ai2d.process({**_AI2D_DOC, "answer": "0"}, "A. cat")["exact_match"] == 1.0
    with pytest.raises(ValueError, match="ai2d"):
        ai2d.target_letter({**_AI2D_DOC, "answer": "4"})


def test_ai2d_aggregate_is_the_mean():
    preds = ["B", "(B)", "deer", "C"]  # 1, 1, 0, 0 -> 2/4
    assert ai2d.aggregate([ai2d.process(_AI2D_DOC, p) for p in preds]) == {"exact_match": 0.5}


# --------------------------------------------------------------------------------------------------------------------
# ChartQA


@pytest.mark.parametrize(
    "pred,gold,ok",
    [
        ("12", "12", True),
        (" 12", "12", True),  # float() accepts surrounding whitespace
        ("12.5", "12", True),  # |0.5| / 12 = 0.042 <= 0.05
        ("12.7", "12", False),  # 0.7 / 12 = 0.058 > 0.05
        ("105", "100", True),  # exactly 5%
        ("94.9", "100", False),  # 5.1%
        ("12%", "12", False),  # 0.12 vs 12
        ("0.25", "25%", True),  # gold 25% -> 0.25
        ("26%", "25%", True),  # 0.26 vs 0.25 -> 4%
        ("25", "25%", False),  # 25 vs 0.25
        ("yes", "Yes", True),  # strings: case-insensitive equality
        ("Yes ", "Yes", False),  # ... without stripping
        ("brazil", "Brazil", True),
        ("Brazil.", "Brazil", False),
        ("0", "0", True),  # gold 0 -> string comparison
        ("0.0", "0", False),  # ... so 0.0 is not "0"
        ("about 12", "12", False),  # not a number -> string comparison fails
    ],
)
def test_chartqa_relaxed_correctness(pred, gold, ok):
    assert chartqa.relaxed_correct(pred, gold) is ok


def test_chartqa_splits():
    rows = [
        ({"answer": "10", "type": "human_test"}, "10.4"),  # 4% -> 1
        ({"answer": "Red", "type": "human_test"}, "red"),  # 1
        ({"answer": "3", "type": "human_test"}, "4"),  # 33% -> 0
        ({"answer": "50%", "type": "augmented_test"}, "0.5"),  # 1
        ({"answer": "Blue", "type": "augmented_test"}, "Green"),  # 0
    ]
    out = chartqa.aggregate([chartqa.process(d, p) for d, p in rows])
    # overall 3/5; human 2/3; augmented 1/2
    assert out == pytest.approx({"relaxed_overall": 0.6, "relaxed_human_split": 2 / 3, "relaxed_augmented_split": 0.5})


def test_chartqa_missing_split_is_left_out():
    out = chartqa.aggregate([chartqa.process({"answer": "1", "type": "augmented_test"}, "1")])
    assert out == {"relaxed_overall": 1.0, "relaxed_augmented_split": 1.0}


# --------------------------------------------------------------------------------------------------------------------
# MMStar


@pytest.mark.parametrize(
    "pred,gold,hit",
    [
        ("B", "B", 1.0),
        ("b", "B", 1.0),
        ("(b)", "B", 1.0),  # "(" then the letter
        ("B. a cat", "B", 1.0),  # only the first character counts
        ("\nB\n", "B", 1.0),  # newlines -> spaces, stripped
        ("Option B", "B", 1.0),
        ("The answer is B.", "B", 1.0),
        ("Answer: B", "B", 0.0),  # first character "a"
        ("Answer: B", "A", 1.0),  # ... which is letter A
        ("The answer is: B", "B", 0.0),  # "the answer is:" is not the "the answer is " prefix
        ("(", "B", 0.0),  # nothing after "("
        ("", "B", 0.0),
        ("C", "B", 0.0),
    ],
)
def test_mmstar_letter_match(pred, gold, hit):
    assert mmstar.letter_match(pred, gold) == hit


def test_mmstar_macro_averages():
    def doc(i, cat, l2, ans="A"):
        return {"index": i, "question": "q", "answer": ans, "category": cat, "l2_category": l2}

    rows = [
        (doc(0, "math", "geometry"), "A"),  # 1
        (doc(1, "math", "geometry"), "B"),  # 0  -> geometry 1/2
        (doc(2, "math", "statistical reasoning"), "(a)"),  # 1 -> statistical reasoning 1
        (doc(3, "coarse perception", "image emotion"), "C"),  # 0
        (doc(4, "coarse perception", "image emotion"), "D"),  # 0
        (doc(5, "coarse perception", "image emotion"), "A"),  # 1
        (doc(6, "coarse perception", "image emotion"), "a"),  # 1 -> image emotion 2/4
    ]
    out = mmstar.aggregate([mmstar.process(d, p) for d, p in rows])
    # math = mean(1/2, 1) = 0.75; coarse = 0.5; average = mean over l2 = (0.5 + 1 + 0.5) / 3 = 2/3
    # (not the document mean 4/7 nor the category mean 0.625)
    assert out == pytest.approx({"math": 0.75, "coarse perception": 0.5, "average": 2 / 3})


# --------------------------------------------------------------------------------------------------------------------
# RealWorldQA

_RW_MC = {
    "question": "Which way is the road turning?\nA. Left\nB. Right\nC. Straight ahead\n"
    "Please answer directly with only the letter of the correct option and nothing else.",
    "answer": "B",
}
_RW_COUNT = {
    "question": "How many cars are in the picture? Please answer directly with a single number.",
    "answer": "2",
}


@pytest.mark.parametrize(
    "doc,pred,hit",
    [
        (_RW_MC, "B", 1.0),
        (_RW_MC, "b", 1.0),  # ignore_case
        (_RW_MC, "B.", 1.0),  # cleaned -> "B"
        (_RW_MC, "(B)", 1.0),
        (_RW_MC, "Right", 1.0),  # option text -> its letter
        (_RW_MC, "B. Right", 1.0),  # cleaned "B Right", "Right" found -> B
        (_RW_MC, "right", 0.0),  # option texts match case-sensitively; "right" != "b"
        (_RW_MC, "Left, not Right", 0.0),  # leftmost option text wins: "Left" -> A
        (_RW_MC, "A", 0.0),
        (_RW_COUNT, "2", 1.0),
        (_RW_COUNT, "Two", 1.0),  # number word -> "2"
        (_RW_COUNT, "two.", 0.0),  # not exactly a number word -> cleaned "two"
        (_RW_COUNT, "2.", 1.0),  # cleaned "2"
        (_RW_COUNT, "2 cars", 0.0),
    ],
)
def test_realworldqa_filters(doc, pred, hit):
    assert rwqa.process(doc, pred)["exact_match"] == hit


def test_realworldqa_labels_options_in_order_found():
    # The lines say B and C, but the filter labels the texts A and B in order of appearance.
    doc = {"question": "Pick one:\nB. foo\nC. bar", "answer": "C"}
    assert rwqa.apply_filters("bar", doc["question"]) == "B"
    assert rwqa.process(doc, "bar")["exact_match"] == 0.0
    assert rwqa.process(doc, "C")["exact_match"] == 1.0


def test_realworldqa_option_with_punctuation_never_matches():
    doc = {"question": "How far?\nA. 5.5 m\nB. 7 m", "answer": "A"}
    # cleaned prediction "55 m" contains neither "5.5 m" nor "7 m" -> stays "55 m" -> wrong
    assert rwqa.apply_filters("5.5 m", doc["question"]) == "55 m"
    assert rwqa.process(doc, "7 m")["filtered"] == "B"


def test_realworldqa_aggregate():
    rows = [(_RW_MC, "B"), (_RW_MC, "Left"), (_RW_COUNT, "Two")]  # 1, 0, 1 -> 2/3
    assert rwqa.aggregate([rwqa.process(d, p) for d, p in rows]) == pytest.approx({"exact_match": 2 / 3})


# --------------------------------------------------------------------------------------------------------------------
# MMMU multiple-choice parser

_OPTS4 = ["cat", "dog", "bird", "fish"]


@pytest.mark.parametrize(
    "response,letter",
    [
        ("B", "B"),  # " B " holds "B "
        ("(C)", "C"),
        ("The answer is (D).", "D"),  # "." trimmed, then "(D)"
        ("C. bird", "C"),  # no "X " anywhere; "C." found
        (",(B).", "B"),  # trim "," then "." -> "(B)"
        ("A or B, I choose B", "B"),  # "A " and "B " -> last " X " is B's
        ("(A) is wrong, (B) is right", "B"),  # last "(X)"
        ("(A) and B", "A"),  # brackets win over bare letters
        ("I am fairly sure that it is a bird here", "C"),  # > 5 words, no letter -> option text "bird"
        ("It looks like a dog chasing a cat to me", "A"),  # texts "cat" and "dog": the later one, cat
    ],
)
def test_mmmu_multiple_choice_parser(response, letter):
    assert mmmu_parse.parse_multi_choice(response, _OPTS4, "validation_Art_1") == letter


def test_mmmu_parser_fallback_is_deterministic_per_doc():
    # "bird" is one word: no letter, and too short (<= 5 words) for the option-text step -> the random fallback.
    picks = {mmmu_parse.parse_multi_choice("bird", _OPTS4, f"validation_Art_{i}") for i in range(40)}
    assert picks <= {"A", "B", "C", "D"} and len(picks) > 1  # a per-document draw, not a constant
    first = mmmu_parse.parse_multi_choice("bird", _OPTS4, "validation_Art_7")
    assert all(mmmu_parse.parse_multi_choice("bird", _OPTS4, "validation_Art_7") == first for _ in range(5))
    assert first == mmmu_parse.fallback_choice("ABCD", "validation_Art_7")


def test_mmmu_pro_ten_options_catch_the_word_i():
    opts10 = [f"o{i}" for i in range(10)]  # letters A..J
    # " I think the answer is J ": "I " and "J " are both candidates; " J " is written last -> J
    assert mmmu_parse.parse_multi_choice("I think the answer is J", opts10, "x") == "J"
    # with ten options "I" is a letter, so "I think so" names option I ...
    assert mmmu_parse.parse_multi_choice("I think so", opts10, "x") == "I"
    # ... while with four options only "B " is a candidate
    assert mmmu_parse.parse_multi_choice("I think the answer is B", _OPTS4, "x") == "B"


# --------------------------------------------------------------------------------------------------------------------
# MMMU open-question parsing and judging


@pytest.mark.parametrize(
    "response,candidates",
    [
        # "the answer is 42": tails after "answer " ("is 42") and "is " ("42"); the shorter, "42" -> 42.0
        ("The answer is 42.", [42.0]),
        # last line also accepts "=": tails "x = 3.14159" (after "so ") and "3.14159" -> 3.14 (2 decimals)
        ("so x = 3.14159", [3.14]),
        ("Paris", ["paris"]),  # no indicator: the whole lower-cased answer
        ("x", [" x", "x "]),  # one character -> space-padded forms
        # no indicator; numbers: "1,000" (comma form) and "000" ("1" is followed by a comma) -> 1000.0, 0.0
        ("1,000 meters", ["1,000 meters", 1000.0, 0.0]),
    ],
)
def test_mmmu_open_parser(response, candidates):
    assert mmmu_parse.parse_open_response(response) == candidates


def test_mmmu_open_judge_itself():
    assert mmmu_parse.eval_open("42", [42.0])  # float equals normalised gold 42.0
    assert mmmu_parse.eval_open("1,000", [1000.0])
    assert mmmu_parse.eval_open("Paris", ["the city of paris"])  # gold string inside the candidate
    assert not mmmu_parse.eval_open("42", ["42.0"])  # a string candidate is only searched for gold strings


def _mmmu_doc(i, subject, answer, qtype="multiple-choice", options="['cat', 'dog', 'bird', 'fish']"):
    return {
        "id": f"validation_{subject}_{i}",
        "question": "q",
        "options": options,
        "answer": answer,
        "question_type": qtype,
    }


def test_mmmu_val_open_questions_follow_the_vendored_glue():
    doc = _mmmu_doc(1, "Math", "42", qtype="open", options="[]")
    rec = mmmu_val.process(doc, "The answer is 42.")
    # candidates [42.0] -> first as a string "42.0"; the judge walks its characters "4", "2", ".", "0" and the only
    # normalised gold is the float 42.0, which the string branch never compares -> wrong
    assert rec["parsed_pred"] == "42.0"
    assert rec["correct"] is False
    assert rec["open_correct_mmmu"] is True  # what MMMU's own judge would say; not scored
    # a blank gold normalises to "", which is inside any character -> the one way an open question scores
    assert mmmu_val.process({**doc, "answer": " "}, "anything")["correct"] is True


def test_mmmu_val_subjects_and_accuracy():
    rows = [
        (_mmmu_doc(1, "Art_Theory", "B"), "(B)"),  # right
        (_mmmu_doc(2, "Art_Theory", "A"), "D"),  # wrong
        (_mmmu_doc(3, "Math", "C"), "The answer is C."),  # right ("C " after trimming the period)
    ]
    recs = [mmmu_val.process(d, p) for d, p in rows]
    assert [r["subject"] for r in recs] == ["Art_Theory", "Art_Theory", "Math"]
    # (1/2 * 2 + 1 * 1) / 3 = 2/3 -> rounded to 5 decimals
    assert mmmu_val.aggregate(recs) == {"accuracy": 0.66667}
    with pytest.raises(ValueError, match="mmmu_val"):
        mmmu_val.process({**rows[0][0], "id": "Math12"}, "A")


def test_mmmu_pro_standard_accuracy():
    opts = str([f"option {i}" for i in range(10)])

    def doc(i, subject, answer):
        return {"id": f"test_{subject}_{i}", "subject": subject, "options": opts, "answer": answer}

    rows = [
        (doc(1, "Physics", "J"), "J"),  # right
        (doc(2, "Physics", "I"), "(I)"),  # right
        (doc(3, "History", "A"), "I think it is J"),  # "I " and "J " -> J, wrong
    ]
    recs = [mmmu_pro_standard.process(d, p) for d, p in rows]
    assert [r["parsed_pred"] for r in recs] == ["J", "I", "J"]
    # (1 * 2 + 0 * 1) / 3 = 0.666... -> 0.66667
    assert mmmu_pro_standard.aggregate(recs) == {"accuracy": 0.66667}


# --------------------------------------------------------------------------------------------------------------------
# The synthetic task (Mini-BARD)


def test_synthetic_exact_match_and_token_accuracy_per_question_type():
    from bard_jax.eval.scoring import synthetic

    docs = [
        ({"answer": "top left", "qtype": "where"}, "top left"),  # exact; 2 words + end right: 3/3
        ({"answer": "top left", "qtype": "where"}, "top right"),  # word 1 wrong: 2/3
        ({"answer": "top left", "qtype": "where"}, "top left top"),  # one word too many: words 2/2, end wrong: 2/3
        ({"answer": "7", "qtype": "number"}, ""),  # nothing: 0/2
    ]
    records = [synthetic.process(doc, pred) for doc, pred in docs]
    assert [r["exact"] for r in records] == [True, False, False, False]
    got = synthetic.aggregate(records)
    # exact 1/4; token accuracy (1 + 2/3 + 2/3 + 0) / 4 = 7/12; where: exact 1/3, tokens (1 + 2/3 + 2/3) / 3 = 7/9
    assert got["exact_match"] == pytest.approx(0.25) and got["token_accuracy"] == pytest.approx(7 / 12)
    assert got["exact_match/where"] == pytest.approx(1 / 3) and got["token_accuracy/where"] == pytest.approx(7 / 9)
    assert got["exact_match/number"] == 0 and got["n/where"] == 3 and got["n/number"] == 1


def test_synthetic_field_accuracy_compares_entries_field_by_field_and_splits_short_and_long():
    from bard_jax.eval.scoring import synthetic

    two = "[ { top left : big red solid circle } , { top right : small blue outline square } ]"
    docs = [
        # Both entries right: 12 / 12 fields, exact.
        ({"answer": two, "qtype": "list"}, two),
        # The first entry missing: the prediction's entry 0 (the answer's entry 1) is compared with entry 0: only
        # "top" is right (1 of 6), and entry 1 is missing (0 of 6): 1 / 12.
        ({"answer": two, "qtype": "list"}, "[ { top right : small blue outline square } ]"),
        # Entry 1's fill wrong and an extra third entry of 6 fields: (6 + 5) / (12 + 6) = 11 / 18.
        ({"answer": two, "qtype": "list"},
         "[ { top left : big red solid circle } , { top right : small blue solid square } , "
         "{ bottom left : big red solid circle } ]"),
        # Short answers are one entry: 1 of 2 words right.
        ({"answer": "top left", "qtype": "where"}, "top right"),
        ({"answer": "big red solid circle", "qtype": "describe"}, "big red solid circle"),
    ]
    records = [synthetic.process(doc, pred) for doc, pred in docs]
    assert [r["field_accuracy"] for r in records] == pytest.approx([1.0, 1 / 12, 11 / 18, 0.5, 1.0])
    assert [r["long"] for r in records] == [True, True, True, False, False]  # 25 words; 2 and 4
    got = synthetic.aggregate(records)
    assert got["exact_match/long"] == pytest.approx(1 / 3) and got["exact_match/short"] == pytest.approx(1 / 2)
    assert got["field_accuracy/long"] == pytest.approx((1 + 1 / 12 + 11 / 18) / 3)
    assert got["field_accuracy/short"] == pytest.approx(0.75) and got["n/long"] == 3 and got["n/short"] == 2
    # An entry left open at the end still counts its fields; punctuation is never a field.
    assert synthetic.entries("[ { top left : big") == [["top", "left", "big"]]
    assert synthetic.field_accuracy("", "top left") == 0.0
