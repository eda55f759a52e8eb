"""Small benchmark datasets in the hub's published parquet schemas, for the eval package's tests.

    rows = write_fixture(tmp_path, "mme")              # ROOT/lmms-lab/MME/data/test-0000k-of-00002.parquet
    all_rows = write_all_fixtures(tmp_path)            # the seven tasks, default rows

Each benchmark is written under ROOT/<hub_path>/ with the column names, Arrow types and file layout of the
dataset a user downloads from the hub (images as struct<bytes: binary, path: string> holding a PNG), so the
readers are tested against the real shape of the data rather than against a schema of our own. The default rows
mix answers and categories so that scoring over them is meaningful (MME: two questions per image, one yes one no;
ChartQA: human and augmented; MMStar: several categories; MMMU: images referenced out of order and inside the
options, an open question).

The rows returned are the text columns only (what `bard_jax.eval.data.text_fields` yields for the row); every
generated image has the size `fixture_image_size(doc_id, column)`, so tests can check which image went where.
"""

from __future__ import annotations

import io
import os
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
MMMU_IMAGES = tuple(f"image_{i}" for i in range(1, 8))

HUB_PATHS = {
    "mme": "lmms-lab/MME",
    "ai2d": "lmms-lab/ai2d",
    "chartqa": "lmms-lab/ChartQA",
    "mmstar": "Lin-Chen/MMStar",
    "realworldqa": "lmms-lab/RealWorldQA",
    "mmmu_val": "lmms-lab/MMMU",
    "mmmu_pro_standard": "MMMU/MMMU_Pro",
}

_MMMU_COMMON = [
    ("id", pa.string()), ("question", pa.string()), ("options", pa.string()), ("explanation", pa.string()),
    *[(name, IMAGE_TYPE) for name in MMMU_IMAGES],
    ("img_type", pa.string()), ("answer", pa.string()), ("topic_difficulty", pa.string()),
]

# Column order and types as the hub datasets publish them.
SCHEMAS = {
    "mme": pa.schema([("question_id", pa.string()), ("image", IMAGE_TYPE), ("question", pa.string()),
                      ("answer", pa.string()), ("category", pa.string())]),
    "ai2d": pa.schema([("question", pa.string()), ("options", pa.list_(pa.string())), ("answer", pa.string()),
                       ("image", IMAGE_TYPE)]),
    "chartqa": pa.schema([("type", pa.string()), ("question", pa.string()), ("answer", pa.string()),
                          ("image", IMAGE_TYPE)]),
    "mmstar": pa.schema([("index", pa.int64()), ("question", pa.string()), ("image", IMAGE_TYPE),
                         ("answer", pa.string()), ("category", pa.string()), ("l2_category", pa.string()),
                         ("meta_info", pa.struct([("source", pa.string()), ("split", pa.string()),
                                                  ("image_path", pa.string())]))]),
    "realworldqa": pa.schema([("image", IMAGE_TYPE), ("question", pa.string()), ("answer", pa.string())]),
    "mmmu_val": pa.schema(_MMMU_COMMON + [("question_type", pa.string()), ("subfield", pa.string())]),
    "mmmu_pro_standard": pa.schema(_MMMU_COMMON + [("subject", pa.string())]),
}

_YN = " Please answer yes or no."
_RWQ = "Please answer directly with only the letter of the correct option and nothing else."


def _mme_rows() -> list[dict]:
    def q(qid, category, text, answer):
        return {"question_id": qid, "question": text + _YN, "answer": answer, "category": category}

    return [
        q("existence/000001.jpg", "existence", "Is there a dog in this image?", "Yes"),
        q("existence/000001.jpg", "existence", "Is there a cat in this image?", "No"),
        q("count/000002.jpg", "count", "Are there two apples in the image?", "No"),
        q("count/000002.jpg", "count", "Are there three apples in the image?", "Yes"),
        q("code_reasoning/0020.png", "code_reasoning", "Does the code print 5?", "Yes"),
        q("code_reasoning/0020.png", "code_reasoning", "Does the code print 6?", "No"),
    ]


def _ai2d_rows() -> list[dict]:
    return [
        {"question": "Which stage comes after the egg?", "options": ["larva", "pupa", "adult", "egg"], "answer": "0"},
        {"question": "What does the arrow point to?", "options": ["stem", "root", "leaf", "flower"], "answer": "2"},
        {"question": "Which planet is closest to the sun?", "options": ["Venus", "Mercury", "Mars"], "answer": "1"},
        {"question": "What eats the grass?", "options": ["hawk", "snake", "frog", "rabbit"], "answer": "3"},
    ]


def _chartqa_rows() -> list[dict]:
    return [
        {"type": "human_test", "question": "What is the value of the tallest bar?", "answer": "42"},
        {"type": "human_test", "question": "Which country has the lowest share?", "answer": "Italy"},
        {"type": "augmented_test", "question": "What is the sum of 2019 and 2020?", "answer": "12.5"},
        {"type": "augmented_test", "question": "Which year had the most sales?", "answer": "2018"},
    ]


def _mmstar_rows() -> list[dict]:
    def q(index, text, options, answer, category, l2):
        opts = ", ".join(f"{letter}: {o}" for letter, o in zip("ABCD", options))
        return {"index": index, "question": f"{text}\nOptions: {opts}", "answer": answer, "category": category,
                "l2_category": l2, "meta_info": {"source": "MMBench", "split": "val", "image_path": f"{index}.jpg"}}

    return [
        q(0, "What is the main topic of the image?", ["sports", "food", "music", "travel"], "A",
          "coarse perception", "image scene and topic"),
        q(1, "How many birds are in the picture?", ["1", "2", "3", "4"], "C",
          "fine-grained perception", "object counting"),
        q(2, "What is the area of the triangle?", ["6", "8", "10", "12"], "B", "math", "geometry"),
        q(3, "Which force keeps the moon in orbit?", ["friction", "magnetism", "gravity", "tension"], "C",
          "science & technology", "biology & chemistry & physics"),
        q(4, "What will happen next in the sequence?", ["red", "blue", "green", "yellow"], "D",
          "logical reasoning", "code & sequence reasoning"),
        q(5, "Is the person on the left taller than the one on the right?", ["yes", "no", "same", "unknown"], "A",
          "instance reasoning", "cross-instance attribute reasoning"),
    ]


def _realworldqa_rows() -> list[dict]:
    return [
        {"question": f"Which lane is the car in?\nA. left\nB. middle\nC. right\n{_RWQ}", "answer": "B"},
        {"question": f"Is the traffic light green?\nA. Yes\nB. No\n{_RWQ}", "answer": "A"},
        {"question": "How many pedestrians are visible? Please answer directly with a single word or number.",
         "answer": "3"},
        {"question": f"What is the closest object?\nA. bike\nB. truck\nC. sign\n{_RWQ}", "answer": "C"},
    ]


def _mmmu_rows() -> list[dict]:
    def q(qid, question, options, answer, qtype, subfield, images):
        row = {"id": qid, "question": question, "options": repr(options), "explanation": "", "img_type":
               "['Diagrams']", "answer": answer, "topic_difficulty": "Medium", "question_type": qtype,
               "subfield": subfield}
        row.update({name: (None if name not in images else ...) for name in MMMU_IMAGES})
        return row

    return [
        q("validation_Accounting_1", "<image 1> What is the net income shown in the table?",
          ["$10", "$20", "$30", "$40"], "B", "multiple-choice", "Financial Accounting", {"image_1"}),
        q("validation_Art_2", "Compare <image 2> with <image 1>. Which is older?", ["the first", "the second"],
          "A", "multiple-choice", "Art History", {"image_1", "image_2"}),
        q("validation_Biology_3", "Which diagram shows mitosis?", ["<image 1>", "<image 2>", "<image 3>"], "C",
          "multiple-choice", "Cell Biology", {"image_1", "image_2", "image_3"}),
        q("validation_Math_4", "<image 1> What is the length of side x?", [], "5", "open", "Geometry",
          {"image_1"}),
        q("validation_Physics_5", "A ball falls from <image 1> height h. What is its speed? <image 1>",
          ["gh", "2gh", "sqrt(2gh)", "g/h"], "C", "multiple-choice", "Mechanics", {"image_1"}),
    ]


def _mmmu_pro_rows() -> list[dict]:
    letters = "ABCDEFGHIJ"

    def q(qid, question, answer, subject, images):
        options = [f"choice {letter.lower()}" for letter in letters]
        row = {"id": qid, "question": question, "options": repr(options), "explanation": "",
               "img_type": "['Tables']", "answer": answer, "topic_difficulty": "Hard", "subject": subject}
        row.update({name: (None if name not in images else ...) for name in MMMU_IMAGES})
        return row

    return [
        q("test_Accounting_1", "<image 1> Compute the depreciation.", "D", "Accounting", {"image_1"}),
        q("test_Chemistry_2", "Which compound in <image 3> and <image 2> is polar?", "J", "Chemistry",
          {"image_2", "image_3"}),
        q("test_History_3", "<image 1> Who painted this?", "A", "History", {"image_1"}),
        q("test_Music_4", "Identify the interval in <image 1>.", "F", "Music", {"image_1"}),
    ]


DEFAULT_ROWS = {
    "mme": _mme_rows, "ai2d": _ai2d_rows, "chartqa": _chartqa_rows, "mmstar": _mmstar_rows,
    "realworldqa": _realworldqa_rows, "mmmu_val": _mmmu_rows, "mmmu_pro_standard": _mmmu_pro_rows,
}


def image_columns(task_name: str) -> tuple[str, ...]:
    """The columns of `task_name`'s schema that hold images."""
    return tuple(f.name for f in SCHEMAS[task_name] if f.type == IMAGE_TYPE)


def fixture_image_size(doc_id: int, column: str) -> tuple[int, int]:
    """(width, height) of the generated image of row `doc_id` in `column`: distinct per row and per column."""
    k = 0 if column == "image" else int(column.rsplit("_", 1)[1])
    return 16 + doc_id, 8 + 2 * k


def png_bytes(size: tuple[int, int], color: tuple[int, int, int] = (200, 30, 60), mode: str = "RGB") -> bytes:
    """A PNG of one colour."""
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(buf, format="PNG")
    return buf.getvalue()


def _image_value(value: Any, doc_id: int, column: str) -> dict | None:
    """The hub's image struct for a row's image cell: `...` / missing -> a generated PNG, bytes / PIL / dict kept."""
    if value is None:
        return None
    if value is ...:
        w, h = fixture_image_size(doc_id, column)
        return {"bytes": png_bytes((w, h), ((37 * doc_id) % 256, (53 * h) % 256, 90)), "path": f"{doc_id}.png"}
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value), "path": None}
    return dict(value)


def _file_names(task_name: str, n_files: int) -> list[str]:
    """The hub's parquet file names for the split, `n_files` shards."""
    shards = lambda prefix: [f"{prefix}-{i:05d}-of-{n_files:05d}.parquet" for i in range(n_files)]
    if task_name == "mmstar":  # the hub holds one mmstar.parquet; several files as the parquet-converter lays out
        return ["mmstar.parquet"] if n_files == 1 else [f"val/{i:04d}.parquet" for i in range(n_files)]
    if task_name == "mmmu_val":
        return shards("data/validation")
    if task_name == "mmmu_pro_standard":
        return shards("standard (10 options)/test")
    return shards("data/test")


def write_fixture(root: str | os.PathLike, task_name: str, rows: list[dict] | None = None,
                  n_files: int = 2) -> list[dict]:
    """Write `rows` (default: DEFAULT_ROWS[task_name]) as the task's split under ROOT/<hub_path>/.

    Image columns missing from a row (or given as `...`) get a generated PNG of `fixture_image_size`; None is a
    null; bytes (also undecodable ones), a PIL image or a {bytes, path} dict are written as given. Rows are split
    into `n_files` contiguous shards in file-name order. Returns the rows' text columns.
    """
    schema = SCHEMAS[task_name]
    rows = [dict(r) for r in (DEFAULT_ROWS[task_name]() if rows is None else rows)]
    images = image_columns(task_name)
    full = []
    for doc_id, row in enumerate(rows):
        out = {}
        for field in schema:
            if field.name in images:
                out[field.name] = _image_value(row.get(field.name, ...), doc_id, field.name)
            else:
                out[field.name] = row.get(field.name)
        full.append(out)
    base = os.path.join(os.fspath(root), HUB_PATHS[task_name])
    names = _file_names(task_name, n_files)
    per_file = -(-len(full) // n_files) if full else 0
    for i, name in enumerate(names):
        path = os.path.join(base, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        chunk = full[i * per_file:(i + 1) * per_file]
        pq.write_table(pa.Table.from_pylist(chunk, schema=schema), path)
    return [{k: v for k, v in r.items() if k not in images} for r in full]


def write_all_fixtures(root: str | os.PathLike) -> dict[str, list[dict]]:
    """Every task's default fixture under `root`; returns {task name: rows written}."""
    return {name: write_fixture(root, name) for name in HUB_PATHS}
