"""The `attributes` synthetic task (Mini-BARD v2): scenes drawn as described, answers derived by hand."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bard_jax.data import synthetic_attributes as A
from bard_jax.data.synthetic import generate, why_not_reusable

OBJECTS = [  # a 2 x 3 scene in reading order
    {"shape": "circle", "color": "red", "size": "big", "fill": "solid", "row": "top", "col": "left", "number": None},
    {"shape": "square", "color": "blue", "size": "small", "fill": "outline", "row": "top", "col": "right",
     "number": None},
    {"shape": "circle", "color": "red", "size": "small", "fill": "outline", "row": "bottom", "col": "middle",
     "number": None},
    {"shape": "triangle", "color": "green", "size": "big", "fill": "solid", "row": "bottom", "col": "right",
     "number": None},
]


def ask(qtype, objects=OBJECTS, tries=3000, hard=False):
    """Questions of one type for a fixed scene (drawn with the generator's own rng until that type comes up)."""
    rng = np.random.default_rng(0)
    out = set()
    for _ in range(tries):
        q = A.make_question(rng, objects, hard)
        if q[0] == qtype:
            out.add(q[1:])
    return out


def test_list_answers_every_object_in_reading_order_and_column_by_column():
    assert ask("list") == {("list the objects in reading order .",
                            "[ { top left : big red solid circle } , { top right : small blue outline square } , "
                            "{ bottom middle : small red outline circle } , { bottom right : big green solid "
                            "triangle } ]")}
    # Columns left, middle, right; top before bottom inside a column.
    assert ask("columns") == {("list the objects column by column .",
                               "[ { top left : big red solid circle } , { bottom middle : small red outline circle } "
                               ", { top right : small blue outline square } , { bottom right : big green solid "
                               "triangle } ]")}


def test_short_questions_find_objects_by_position_and_by_content():
    where = ask("where")
    # Two red circles: "red circle" never names an object; the square and the triangle can be named.
    assert where == {("where is the blue square ?", "top right"), ("where is the green triangle ?", "bottom right")}
    find = ask("find")
    assert find <= {("what size is the blue square ?", "small"), ("what fill is the blue square ?", "outline"),
                    ("what size is the green triangle ?", "big"), ("what fill is the green triangle ?", "solid")}
    assert len(find) == 4
    describe = ask("describe")
    assert ("describe the shape at the bottom middle .", "small red outline circle") in describe
    attribute = ask("attribute")
    assert ("what shape is at the top right ?", "square") in attribute
    assert ("what fill is the shape at the top left ?", "solid") in attribute
    count = dict(ask("count"))
    for q, a in {"how many red shapes are there ?": "2", "how many circles are there ?": "2",
                 "how many small shapes are there ?": "2", "how many diamonds are there ?": "0",
                 "how many outline shapes are there ?": "2", "how many yellow shapes are there ?": "0"}.items():
        assert count.get(q, a) == a, q


def test_without_a_nameable_object_no_question_finds_one_by_content():
    twins = [dict(OBJECTS[0]), dict(OBJECTS[0], col="middle")]
    rng = np.random.default_rng(1)
    kinds = {A.make_question(rng, twins)[0] for _ in range(300)}
    assert kinds == {"list", "columns", "count", "attribute", "describe"}


def test_scenes_draw_size_and_fill_as_described():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        img, objects = A.draw_scene(rng)
        px = np.asarray(img).astype(int)
        assert 2 <= len(objects) <= min(5, (img.width // A.CELL) * 2)
        for o in objects:
            r, c = A.ROWS.index(o["row"]), A.COLS[img.width // A.CELL].index(o["col"])
            rgb = np.asarray(A.COLORS[o["color"]])
            cell = px[r * A.CELL:(r + 1) * A.CELL, c * A.CELL:(c + 1) * A.CELL]
            coloured = np.abs(cell - rgb).max(axis=-1) <= 1
            # The same shape drawn solid on its own: an outline colours well under its pixels, a solid shape all.
            alone = Image.new("RGB", (A.CELL, A.CELL), A.BACKGROUND)
            A._draw_object(ImageDraw.Draw(alone), A._box(0, 0, o["size"]), o["shape"], A.COLORS[o["color"]], True)
            solid = (np.abs(np.asarray(alone).astype(int) - rgb).max(axis=-1) <= 1).sum()
            if o["fill"] == "solid":
                assert coloured.sum() == solid, o
            else:
                assert coloured.sum() < 0.8 * solid and cell[16, 16].tolist() != rgb.tolist(), o
            # Big shapes span 26 px; small ones 14, centred.
            where = np.argwhere(coloured)
            span = where.max(axis=0) - where.min(axis=0) + 1
            assert span.max() == (26 if o["size"] == "big" else 14), o
            seen.add((o["size"], o["fill"], o["shape"]))
    assert len(seen) == 16


def test_answer_lengths_and_the_long_share(tmp_path):
    rng = np.random.default_rng(3)
    lengths = {}
    for _ in range(2000):
        _, objects = A.draw_scene(rng)
        qtype, _, answer = A.make_question(rng, objects)
        lengths.setdefault(qtype, []).append(len(answer.split()))
    assert min(lengths["list"]) == 21 and max(lengths["list"]) == 51  # 10 n + 1 for 2 to 5 objects
    long_share = (len(lengths["list"]) + len(lengths["columns"])) / 2000
    assert 0.45 <= long_share <= 0.55
    assert max(max(v) for k, v in lengths.items() if k not in ("list", "columns")) == 4


def test_hard_mode_adds_digits_to_big_objects():
    rng = np.random.default_rng(5)
    for _ in range(20):
        _, objects = A.draw_scene(rng, hard=True)
        for o in objects:
            assert (o["number"] is not None) == (o["size"] == "big")
    o = dict(OBJECTS[0], number=7)
    assert A.entry(o) == "{ top left : big red solid circle 7 }"
    assert ("what number is on the green triangle ?", "3") in ask(
        "number", [OBJECTS[0], dict(OBJECTS[3], number=3)], hard=True)


def test_generated_folder_records_the_task_and_a_new_task_regenerates(tmp_path):
    out = generate(str(tmp_path / "d"), n=6, seed=0, n_eval=2, task="attributes")
    settings = json.load(open(os.path.join(out, "settings.json")))
    assert settings["task"] == "attributes"
    task = json.load(open(os.path.join(out, "tokenizer", "task.json")))
    assert task["question_types"] == list(A.QTYPES)
    assert why_not_reusable(out, 6, 0, 2, "attributes") is None
    assert "task=attributes, not the requested" in why_not_reusable(out, 6, 0, 2, "digits")
    from bard_jax.data import Processor

    proc = Processor.from_pretrained(os.path.join(out, "tokenizer"))
    for line in open(os.path.join(out, "train.jsonl")):
        answer = json.loads(line)["meta"]["answer"]
        ids = proc.tokenizer.encode(answer, add_special_tokens=False)
        assert proc.tokenizer.unk_token_id not in ids and len(ids) == len(answer.split())
    with pytest.raises(Exception, match="unknown synthetic task 'nope'"):
        generate(str(tmp_path / "e"), n=1, task="nope")
