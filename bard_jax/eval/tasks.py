"""The seven benchmarks of the BARD-VL release, with the prompts its lmms-eval setup gives the model.

Each task follows the release's task definition (split, images, text, target, max_new_tokens) under the
model name `bard_vl`: a task's `bard_vl` prompt settings are used where it has them (only mmmu_val, which then
takes the Qwen3-VL "Question: ... Options: ..." format), its `default` settings otherwise. MMMU texts keep their
`<image N>` references: the release shows all images first (no interleaving) and only strips a bare "<image>".

File patterns follow the hub layouts (`data/<split>-*.parquet` for the lmms-lab uploads, one `mmstar.parquet`,
one folder per MMMU-Pro config) and accept the parquet-converter's `<config>/<split>/*.parquet` variant and the
per-subject layout of MMMU/MMMU.
"""

from __future__ import annotations

import ast
import os
import re

from bard_jax.eval.errors import EvalError
from bard_jax.eval.task import Task

MMMU_IMAGES = tuple(f"image_{i}" for i in range(1, 8))
_IMAGE_REF = re.compile(r"<image \d+>")
_YES_NO = " Please answer yes or no."  # MME and MMStar drop this when they append their own instruction

# The post prompts of the tasks' `default` (mmmu_val: `bard_vl`) settings; every pre prompt is empty except
# mmmu_val's "Question: ".
MME_POST = "\nAnswer the question using a single word or phrase."
AI2D_POST = "\nAnswer with the option's letter from the given choices directly."
CHARTQA_POST = "\nAnswer the question with a single word."
MMSTAR_POST = "\nAnswer with the option's letter from the given choices directly"  # sic: no final full stop
MMMU_MC_POST = "Answer with the option letter only."
MMMU_OPEN_POST = "Please select the correct answer from the options above."
MMMU_PRO_POST = "Answer with the option letter from the given choices directly."


def _letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def _lettered(options: list) -> str:
    """'A. first\\nB. second...': how the MCQ tasks list their options."""
    return "\n".join(f"{letter}. {option}" for letter, option in zip(_letters(len(options)), options))


def _options(doc: dict) -> list:
    """MMMU's options, which the hub stores as the repr of a Python list."""
    try:
        options = ast.literal_eval(doc["options"])
    except (ValueError, SyntaxError, TypeError):
        raise EvalError(f"row {doc.get('id')!r}: options {doc['options']!r} is not a list literal") from None
    if not isinstance(options, (list, tuple)):
        raise EvalError(f"row {doc.get('id')!r}: options {doc['options']!r} is not a list literal")
    return list(options)


def _single_image(doc: dict) -> list[str]:
    return ["image"]


def _answer(doc: dict) -> str:
    return str(doc["answer"])


# --- per-task text ----------------------------------------------------------------------------------------------

def _mme_text(doc: dict) -> str:
    return doc["question"].strip().replace(_YES_NO, "") + MME_POST


def _ai2d_text(doc: dict) -> str:
    return f"{doc['question']}\n{_lettered(doc['options'])}{AI2D_POST}"


def _ai2d_target(doc: dict) -> str:
    """AI2D stores the answer as the option's index ("0".."3"); the task reports its letter."""
    letters = _letters(len(doc["options"]))
    try:
        return letters[int(doc["answer"])]
    except (ValueError, IndexError, TypeError):
        raise EvalError(f"ai2d answer {doc['answer']!r} is not an index into {len(letters)} options") from None


def _chartqa_text(doc: dict) -> str:
    return f"{doc['question']}{CHARTQA_POST}"


def _mmstar_text(doc: dict) -> str:
    return doc["question"].strip().replace(_YES_NO, "") + MMSTAR_POST


def _realworldqa_text(doc: dict) -> str:
    return doc["question"].strip()  # empty pre/post prompt: the question keeps its own answer instruction


def _mmmu_text(doc: dict) -> str:
    tail = MMMU_MC_POST if doc["question_type"] == "multiple-choice" else MMMU_OPEN_POST
    return f"Question: {doc['question']}\nOptions:\n{_lettered(_options(doc))}\n{tail}"


def _mmmu_pro_text(doc: dict) -> str:
    return f"{doc['question']}\n{_lettered(_options(doc))}\n\n{MMMU_PRO_POST}"


# --- MMMU images -------------------------------------------------------------------------------------------------

def _referenced(text: str) -> list[str]:
    """The image columns `<image N>` references in `text` name, deduplicated and sorted by name (the harness's
    order: image_1 before image_2 whatever order the text mentions them in)."""
    return sorted({ref.strip("<>").replace(" ", "_") for ref in _IMAGE_REF.findall(text)})


def _mmmu_visuals(doc: dict) -> list[str]:
    """MMMU looks for references in the question, and in the options only for multiple-choice questions."""
    text = doc["question"]
    if doc["question_type"] == "multiple-choice":
        text += "\n" + _lettered(_options(doc))
    return _referenced(text)


def _mmmu_pro_visuals(doc: dict) -> list[str]:
    return _referenced(doc["question"] + "\n" + _lettered(_options(doc)))


# --- the tasks ---------------------------------------------------------------------------------------------------

def _lmms_lab(split: str) -> tuple[str, ...]:
    return (f"data/{split}-*.parquet", f"default/{split}/*.parquet")


TASKS: dict[str, Task] = {t.name: t for t in (
    Task(name="mme", hub_path="lmms-lab/MME", files=_lmms_lab("test"), split="test",
         columns=("question_id", "question", "answer", "category", "image"), image_columns=("image",),
         max_new_tokens=16, text=_mme_text, visual_columns=_single_image, target_of=_answer),
    Task(name="ai2d", hub_path="lmms-lab/ai2d", files=_lmms_lab("test"), split="test",
         columns=("question", "options", "answer", "image"), image_columns=("image",),
         max_new_tokens=16, text=_ai2d_text, visual_columns=_single_image, target_of=_ai2d_target),
    Task(name="chartqa", hub_path="lmms-lab/ChartQA", files=_lmms_lab("test"), split="test",
         columns=("type", "question", "answer", "image"), image_columns=("image",),
         max_new_tokens=16, text=_chartqa_text, visual_columns=_single_image, target_of=_answer),
    # MMStar's task sets no generation_kwargs, so the release's model wrapper falls back to its 1024 tokens.
    Task(name="mmstar", hub_path="Lin-Chen/MMStar", files=("mmstar.parquet", "val/*.parquet", "*/val/*.parquet"),
         split="val", columns=("index", "question", "answer", "category", "l2_category", "image"),
         image_columns=("image",), max_new_tokens=1024, text=_mmstar_text, visual_columns=_single_image,
         target_of=_answer),
    Task(name="realworldqa", hub_path="lmms-lab/RealWorldQA", files=_lmms_lab("test"), split="test",
         columns=("question", "answer", "image"), image_columns=("image",),
         max_new_tokens=16, text=_realworldqa_text, visual_columns=_single_image, target_of=_answer),
    Task(name="mmmu_val", hub_path="lmms-lab/MMMU",
         files=(*_lmms_lab("validation"), "*/validation-*.parquet"), split="validation",
         columns=("id", "question", "options", "answer", "question_type", *MMMU_IMAGES), image_columns=MMMU_IMAGES,
         max_new_tokens=128, text=_mmmu_text, visual_columns=_mmmu_visuals, target_of=_answer),
    Task(name="mmmu_pro_standard", hub_path="MMMU/MMMU_Pro",
         files=("standard (10 options)/test-*.parquet", "standard (10 options)/test/*.parquet"), split="test",
         columns=("id", "question", "options", "answer", "subject", *MMMU_IMAGES), image_columns=MMMU_IMAGES,
         max_new_tokens=256, text=_mmmu_pro_text, visual_columns=_mmmu_pro_visuals, target_of=_answer),
)}


def _synthetic_row(record: dict, base_dir: str) -> dict:
    """A held-out record of the embedded synthetic task -> a one-image row (the image read from its path)."""
    content = record["messages"][0]["content"]
    image = next(part["image"] for part in content if part["type"] == "image")
    return {"question": " ".join(part["text"] for part in content if part["type"] == "text"),
            "image": {"bytes": None, "path": os.path.join(base_dir, image)},
            "answer": record["meta"]["answer"], "qtype": record["meta"]["qtype"]}


# The embedded synthetic task's held-out set (`python -m bard_jax.data.synthetic`; ROOT is its directory): the
# Mini-BARD study's evaluation. Its models train without a system turn and at the task's own image sizes, and its
# longest answers are 54 tokens.
SYNTHETIC = Task(name="synthetic", hub_path="", files=("eval.jsonl",), split="eval",
                 columns=("question", "image", "answer", "qtype"), image_columns=("image",), max_new_tokens=64,
                 text=lambda doc: doc["question"], visual_columns=_single_image, target_of=_answer, system=None,
                 reader="jsonl", jsonl_row=_synthetic_row)
TASKS[SYNTHETIC.name] = SYNTHETIC


def get_task(name: str) -> Task:
    """The task called `name`; an unknown name is an EvalError that lists the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise EvalError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
