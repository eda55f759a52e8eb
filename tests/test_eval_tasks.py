"""The benchmark definitions against the release's lmms-eval tasks, and reading the hub's parquet layouts.

Every expected prompt below is written out by hand from the vendored task yaml / utils (the `default` prompt
settings, `bard_vl` for mmmu_val) followed by the model wrapper's removal of "<image>", so a change in the
prompt code cannot silently change what the model is asked.
"""

from __future__ import annotations

import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers_eval import fixture_image_size, png_bytes, write_all_fixtures, write_fixture
from PIL import Image

from bard_jax.errors import BardError
from bard_jax.eval.data import decode_image, read_docs, split_files, text_fields
from bard_jax.eval.errors import EvalError
from bard_jax.eval.tasks import TASKS, get_task

NAMES = ("mme", "ai2d", "chartqa", "mmstar", "realworldqa", "mmmu_val", "mmmu_pro_standard")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    write_all_fixtures(root)
    return root


@pytest.fixture(scope="module")
def docs(root):
    return {name: dict(read_docs(root, get_task(name))) for name in NAMES}


def test_the_seven_tasks():
    assert tuple(TASKS) == (*NAMES, "synthetic")  # the paper's seven, then the embedded task (Mini-BARD)
    assert {n: (t.split, t.max_new_tokens) for n, t in TASKS.items()} == {
        "mme": ("test", 16), "ai2d": ("test", 16), "chartqa": ("test", 16), "mmstar": ("val", 1024),
        "realworldqa": ("test", 16), "mmmu_val": ("validation", 128), "mmmu_pro_standard": ("test", 256),
        "synthetic": ("eval", 64),
    }
    assert get_task("mme") is TASKS["mme"]


# --- prompts, by hand ---------------------------------------------------------------------------------------------

PROMPTS = {
    ("mme", 0): "Is there a dog in this image?\nAnswer the question using a single word or phrase.",
    ("mme", 5): "Does the code print 6?\nAnswer the question using a single word or phrase.",
    ("ai2d", 1): "What does the arrow point to?\nA. stem\nB. root\nC. leaf\nD. flower\n"
                 "Answer with the option's letter from the given choices directly.",
    ("ai2d", 2): "Which planet is closest to the sun?\nA. Venus\nB. Mercury\nC. Mars\n"
                 "Answer with the option's letter from the given choices directly.",
    ("chartqa", 2): "What is the sum of 2019 and 2020?\nAnswer the question with a single word.",
    ("mmstar", 1): "How many birds are in the picture?\nOptions: A: 1, B: 2, C: 3, D: 4\n"
                   "Answer with the option's letter from the given choices directly",
    ("realworldqa", 0): "Which lane is the car in?\nA. left\nB. middle\nC. right\n"
                        "Please answer directly with only the letter of the correct option and nothing else.",
    ("realworldqa", 2): "How many pedestrians are visible? Please answer directly with a single word or number.",
    ("mmmu_val", 1): "Question: Compare <image 2> with <image 1>. Which is older?\nOptions:\nA. the first\n"
                     "B. the second\nAnswer with the option letter only.",
    ("mmmu_val", 3): "Question: <image 1> What is the length of side x?\nOptions:\n\n"
                     "Please select the correct answer from the options above.",
    ("mmmu_pro_standard", 1): "Which compound in <image 3> and <image 2> is polar?\nA. choice a\nB. choice b\n"
                              "C. choice c\nD. choice d\nE. choice e\nF. choice f\nG. choice g\nH. choice h\n"
                              "I. choice i\nJ. choice j\n\nAnswer with the option letter from the given choices "
                              "directly.",
}


@pytest.mark.parametrize("name,doc_id", sorted(PROMPTS))
def test_prompt_matches_the_release(docs, name, doc_id):
    assert get_task(name).prompt(docs[name][doc_id]) == PROMPTS[name, doc_id]


TARGETS = {
    "mme": ["Yes", "No", "No", "Yes", "Yes", "No"],
    "ai2d": ["A", "C", "B", "D"],
    "chartqa": ["42", "Italy", "12.5", "2018"],
    "mmstar": ["A", "C", "B", "C", "D", "A"],
    "realworldqa": ["B", "A", "3", "C"],
    "mmmu_val": ["B", "A", "C", "5", "C"],
    "mmmu_pro_standard": ["D", "J", "A", "F"],
}


@pytest.mark.parametrize("name", NAMES)
def test_targets(docs, name):
    task = get_task(name)
    assert [task.target(docs[name][i]) for i in range(len(docs[name]))] == TARGETS[name]


def test_bare_image_placeholder_is_removed(tmp_path):
    write_fixture(tmp_path, "chartqa", [{"type": "human_test", "question": "<image>What is shown?", "answer": "x"}],
                  n_files=1)
    (_, doc), = read_docs(tmp_path, get_task("chartqa"))
    assert get_task("chartqa").prompt(doc) == "What is shown?\nAnswer the question with a single word."


def test_mme_keeps_questions_without_the_yes_no_suffix(tmp_path):
    write_fixture(tmp_path, "mme", [{"question_id": "a.png", "question": "  Is it red?  ", "answer": "No",
                                     "category": "color"}], n_files=1)
    (_, doc), = read_docs(tmp_path, get_task("mme"))
    assert get_task("mme").prompt(doc) == "Is it red?\nAnswer the question using a single word or phrase."


# --- images ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mme", "ai2d", "chartqa", "mmstar", "realworldqa"])
def test_single_image_tasks(docs, name):
    task = get_task(name)
    for doc_id, doc in docs[name].items():
        (image,) = task.visuals(doc)
        assert image.mode == "RGB" and image.size == fixture_image_size(doc_id, "image")


def _sizes(images):
    return [im.size for im in images]


@pytest.mark.parametrize("name,doc_id,columns", [
    ("mmmu_val", 0, ["image_1"]),
    ("mmmu_val", 1, ["image_1", "image_2"]),  # referenced as 2 then 1: the harness sorts by name
    ("mmmu_val", 2, ["image_1", "image_2", "image_3"]),  # references inside the options
    ("mmmu_val", 3, ["image_1"]),
    ("mmmu_val", 4, ["image_1"]),  # referenced twice, shown once
    ("mmmu_pro_standard", 1, ["image_2", "image_3"]),
    ("mmmu_pro_standard", 3, ["image_1"]),
])
def test_mmmu_images_follow_the_references(docs, name, doc_id, columns):
    images = get_task(name).visuals(docs[name][doc_id])
    assert all(im.mode == "RGB" for im in images)
    assert _sizes(images) == [fixture_image_size(doc_id, c) for c in columns]


def test_mmmu_open_question_ignores_references_in_options(tmp_path):
    row = {"id": "validation_Math_1", "question": "<image 1> Find x.", "options": "['<image 2>']", "answer": "3",
           "question_type": "open", "subfield": "Algebra"}
    write_fixture(tmp_path, "mmmu_val", [row], n_files=1)
    (_, doc), = read_docs(tmp_path, get_task("mmmu_val"))
    assert _sizes(get_task("mmmu_val").visuals(doc)) == [fixture_image_size(0, "image_1")]


def test_mmmu_null_referenced_image_is_an_eval_error(tmp_path):
    row = {"id": "validation_Art_1", "question": "<image 2> Who?", "options": "['a', 'b']", "answer": "A",
           "question_type": "multiple-choice", "subfield": "Art", "image_2": None}
    write_fixture(tmp_path, "mmmu_val", [row], n_files=1)
    (_, doc), = read_docs(tmp_path, get_task("mmmu_val"))
    with pytest.raises(EvalError, match="image_2"):
        get_task("mmmu_val").visuals(doc)


def test_mmmu_options_that_are_not_a_list_literal(tmp_path):
    row = {"id": "validation_Art_1", "question": "Who?", "options": "a, b", "answer": "A",
           "question_type": "multiple-choice", "subfield": "Art"}
    write_fixture(tmp_path, "mmmu_val", [row], n_files=1)
    (_, doc), = read_docs(tmp_path, get_task("mmmu_val"))
    with pytest.raises(EvalError, match="validation_Art_1"):
        get_task("mmmu_val").prompt(doc)


def test_non_rgb_images_are_converted(tmp_path):
    rgba = Image.new("RGBA", (5, 7), (1, 2, 3, 4))
    write_fixture(tmp_path, "realworldqa", [{"question": "q", "answer": "A", "image": rgba}], n_files=1)
    (_, doc), = read_docs(tmp_path, get_task("realworldqa"))
    (image,) = get_task("realworldqa").visuals(doc)
    assert image.mode == "RGB" and image.size == (5, 7) and image.getpixel((0, 0)) == (1, 2, 3)


def test_decode_image_reads_the_path_when_bytes_are_null(tmp_path):
    (tmp_path / "pic.png").write_bytes(png_bytes((9, 4)))
    assert decode_image({"bytes": None, "path": "pic.png"}, base_dir=tmp_path).size == (9, 4)
    assert decode_image({"bytes": None, "path": str(tmp_path / "pic.png")}).size == (9, 4)
    with pytest.raises(EvalError, match="missing.png"):
        decode_image({"bytes": None, "path": "missing.png"}, base_dir=tmp_path)
    with pytest.raises(EvalError, match="neither"):
        decode_image({"bytes": None, "path": None})


def test_undecodable_image_bytes(tmp_path):
    with pytest.raises(EvalError, match="undecodable"):
        decode_image({"bytes": b"not a png", "path": "x.png"})
    write_fixture(tmp_path, "ai2d", [{"question": "q", "options": ["a", "b"], "answer": "1", "image": b"\x89PNG.."}],
                  n_files=1)
    (_, doc), = read_docs(tmp_path, get_task("ai2d"))  # reading succeeds; the row fails alone when decoded
    with pytest.raises(EvalError, match="'image'.*undecodable"):
        get_task("ai2d").visuals(doc)


# --- reading the split -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_files", [1, 2, 3])
def test_read_docs_order_and_ids_across_files(tmp_path, n_files):
    rows = write_fixture(tmp_path, "mme", n_files=n_files)
    task = get_task("mme")
    assert len(split_files(tmp_path, task)) == n_files
    got = list(read_docs(tmp_path, task))
    assert [i for i, _ in got] == list(range(len(rows)))
    assert [text_fields(doc) for _, doc in got] == rows
    assert all(set(doc) == set(task.columns) for _, doc in got)
    assert [i for i, _ in read_docs(tmp_path, task, limit=4)] == [0, 1, 2, 3]
    assert list(read_docs(tmp_path, task, limit=0)) == []


def test_split_files_sorted_and_hub_layouts(root):
    paths = {name: [os.path.relpath(p, root) for p in split_files(root, get_task(name))] for name in NAMES}
    assert paths["mme"] == [os.path.join("lmms-lab", "MME", "data", f"test-0000{i}-of-00002.parquet") for i in (0, 1)]
    assert paths["mmmu_val"][0] == os.path.join("lmms-lab", "MMMU", "data", "validation-00000-of-00002.parquet")
    assert paths["mmmu_pro_standard"][1] == os.path.join("MMMU", "MMMU_Pro", "standard (10 options)",
                                                         "test-00001-of-00002.parquet")


@pytest.mark.parametrize("name", NAMES)
def test_text_fields_are_the_rows_text_columns(root, docs, tmp_path, name):
    rows = write_fixture(tmp_path, name)
    task = get_task(name)
    assert [text_fields(docs[name][i]) for i in range(len(rows))] == [
        {k: v for k, v in row.items() if k in task.columns} for row in rows]


def test_mmstar_single_file_wins_over_converted_shards(tmp_path):
    write_fixture(tmp_path, "mmstar", n_files=2)  # val/0000.parquet, val/0001.parquet
    task = get_task("mmstar")
    assert [os.path.basename(p) for p in split_files(tmp_path, task)] == ["0000.parquet", "0001.parquet"]
    write_fixture(tmp_path, "mmstar", n_files=1)  # the hub's own mmstar.parquet
    assert [os.path.relpath(p, tmp_path) for p in split_files(tmp_path, task)] == [
        os.path.join("Lin-Chen", "MMStar", "mmstar.parquet")]


def test_mmmu_per_subject_layout(tmp_path):
    rows = write_fixture(tmp_path, "mmmu_val", n_files=2)
    base = tmp_path / "lmms-lab" / "MMMU"
    # MMMU/MMMU's layout: one config folder per subject; sorted subject order decides doc ids.
    for subject, shard in (("Biology", "00000"), ("Accounting", "00001")):
        (base / subject).mkdir()
        shutil.move(base / "data" / f"validation-{shard}-of-00002.parquet",
                    base / subject / "validation-00000-of-00001.parquet")
    (base / "data").rmdir()
    ids = [doc["id"] for _, doc in read_docs(tmp_path, get_task("mmmu_val"))]
    assert ids == [r["id"] for r in rows[3:]] + [r["id"] for r in rows[:3]]


# --- bad inputs --------------------------------------------------------------------------------------------------

def test_missing_task_directory(tmp_path):
    with pytest.raises(EvalError) as e:
        list(read_docs(tmp_path, get_task("chartqa")))
    assert os.path.join(str(tmp_path), "lmms-lab", "ChartQA") in str(e.value)


def test_directory_without_split_files(tmp_path):
    (tmp_path / "lmms-lab" / "MME" / "data").mkdir(parents=True)
    (tmp_path / "lmms-lab" / "MME" / "data" / "train-00000-of-00001.parquet").write_bytes(b"")
    with pytest.raises(EvalError, match=r"'data/test-\*\.parquet'"):
        split_files(tmp_path, get_task("mme"))


def test_unknown_task():
    with pytest.raises(EvalError) as e:
        get_task("mmbench")
    assert isinstance(e.value, BardError) and isinstance(e.value, ValueError)
    assert "'mmbench'" in str(e.value) and all(name in str(e.value) for name in NAMES)


def test_parquet_missing_a_needed_column(tmp_path):
    write_fixture(tmp_path, "chartqa", n_files=2)
    bad = tmp_path / "lmms-lab" / "ChartQA" / "data" / "test-00001-of-00002.parquet"
    pq.write_table(pq.read_table(bad).drop_columns(["type"]), bad)
    with pytest.raises(EvalError) as e:
        list(read_docs(tmp_path, get_task("chartqa")))
    assert str(bad) in str(e.value) and "'type'" in str(e.value)


def test_parquet_that_is_not_parquet(tmp_path):
    write_fixture(tmp_path, "realworldqa", n_files=1)
    bad = tmp_path / "lmms-lab" / "RealWorldQA" / "data" / "test-00000-of-00001.parquet"
    bad.write_bytes(b"garbage")
    with pytest.raises(EvalError, match="cannot read parquet file .*test-00000-of-00001"):
        list(read_docs(tmp_path, get_task("realworldqa")))


def test_ai2d_answer_out_of_range(tmp_path):
    write_fixture(tmp_path, "ai2d", [{"question": "q", "options": ["a", "b"], "answer": "4"}], n_files=1)
    (_, doc), = read_docs(tmp_path, get_task("ai2d"))
    with pytest.raises(EvalError, match="'4'"):
        get_task("ai2d").target(doc)


def test_fixture_schema_is_the_hubs(root):
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    mmmu = pq.read_schema(split_files(root, get_task("mmmu_val"))[0])
    assert all(mmmu.field(f"image_{i}").type == image for i in range(1, 8))
    assert mmmu.field("options").type == pa.string()
    assert pq.read_schema(split_files(root, get_task("ai2d"))[0]).field("options").type == pa.list_(pa.string())


def test_the_synthetic_task_reads_the_embedded_tasks_held_out_records(tmp_path):
    import json

    from bard_jax.data.synthetic import generate
    from bard_jax.eval.prompts import chat_messages

    root = generate(str(tmp_path / "syn"), n=2, seed=0, n_eval=5)
    records = [json.loads(line) for line in open(os.path.join(root, "eval.jsonl"))]
    task = get_task("synthetic")
    docs = list(read_docs(root, task, limit=4))
    assert [d for d, _ in docs] == [0, 1, 2, 3]
    for (_, doc), rec in zip(docs, records):
        assert task.prompt(doc) == rec["messages"][0]["content"][1]["text"]
        assert task.target(doc) == rec["meta"]["answer"] and doc["qtype"] == rec["meta"]["qtype"]
        image = task.visuals(doc)[0]
        assert image.size == Image.open(os.path.join(root, rec["messages"][0]["content"][0]["image"])).size
    # Trained without a system turn, evaluated without one.
    messages = chat_messages(task.visuals(docs[0][1]), task.prompt(docs[0][1]), task.system)
    assert [m["role"] for m in messages] == ["user"]
