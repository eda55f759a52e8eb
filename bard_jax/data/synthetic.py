"""The embedded default task: small drawn scenes and questions that need the image, with a word-level tokenizer.

  python -m bard_jax.data.synthetic --out DIR --n N --seed S [--n-eval M] [--task NAME]

writes DIR/tokenizer/ (an HF tokenizer + chat template + Qwen3-VL-style preprocessor_config.json + task.json),
DIR/images/*.png, DIR/train.jsonl, DIR/eval.jsonl (disjoint scenes) and DIR/settings.json (task, n, n_eval, seed and
the format version). The same settings give the same bytes. Everything is written into a temporary folder next to DIR
and renamed into place when complete, so a killed generation never leaves a DIR that looks usable; `ensure` reuses
DIR only when its settings match and its files are complete.

Two tasks. `attributes` (and its hard mode `attributes_hard`, `bard_jax.data.synthetic_attributes`) is Mini-BARD's:
shapes, colours, sizes and fills, with long structured answers. `digits` (the default of `data.synthetic_task`, and
the first Mini-BARD's) is described here; `--task` picks one. A scene is a 2 x 2 or 2 x 3 grid of 32-pixel cells;
some cells hold a shape (circle, square, triangle, diamond) in one of five colours with a digit drawn on it.
Question types:
  count   "how many red shapes are there ?"          -> "2"                       (1 token)
  color   "what color is the triangle ?"             -> "blue"                    (unique shapes only)
  shape   "what shape is at the bottom right ?"      -> "circle"                  (occupied cells only)
  number  "what number is on the square ?"           -> "7"                       (or "... at the top left ?")
  where   "where is the 3 ?"                         -> "top left"                (2 tokens)
  list    "list the objects in reading order ."      -> "[ { shape : circle , color : red , number : 3 } , ... ]"
                                                                                   (13 per object + 2: 15 to 54)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from bard_jax import cli
from bard_jax.atomic_dir import atomic_dir, clean_stale_temp_dirs
from bard_jax.data.processor import DataError

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30),
          "purple": (150, 60, 190)}
ROWS = ("top", "bottom")
COLS = {2: ("left", "right"), 3: ("left", "middle", "right")}
QTYPES = ("count", "color", "shape", "number", "where", "list")
CELL = 32
# The processor's largest image area (pixels) written with the task's tokenizer: the scenes are smaller, so they are
# never resized down.
IMAGE_MAX_PIXELS = 128 * 128
# Digits are drawn as seven-segment glyphs (8 x 13 px, 2-px strokes) rather than with a font: the bitmap is the same
# on every machine and Pillow version, and each digit is large enough for a tiny vision tower to read at 16-px patches.
SEGMENTS = {0: "abcdef", 1: "bc", 2: "abged", 3: "abgcd", 4: "fgbc", 5: "afgcd", 6: "afgedc", 7: "abc", 8: "abcdefg",
            9: "abcdfg"}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>", "<|mask|>"]
WORDS = (["user", "assistant", "system", "\n", "how", "many", "are", "there", "shapes", "what", "color", "is", "the",
          "number", "on", "where", "list", "objects", "in", "reading", "order", "shape", "?", ".", ",", ":", "[", "]",
          "{", "}", "you", "a", "helpful", "assistant", "at"] + list(SHAPES) + list(COLORS) + ["top", "bottom", "left",
          "middle", "right"] + [str(i) for i in range(10)])
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def draw_digit(d: ImageDraw.ImageDraw, x: int, y: int, digit: int, w: int = 8, h: int = 13, t: int = 2,
               color: tuple[int, int, int] = (255, 255, 255)) -> None:
    """A seven-segment `digit` (white unless told) whose top-left corner is (x, y)."""
    mid = y + (h - t) // 2
    boxes = {"a": (x, y, x + w, y + t), "g": (x, mid, x + w, mid + t), "d": (x, y + h - t, x + w, y + h),
             "f": (x, y, x + t, mid + t), "b": (x + w - t, y, x + w, mid + t), "e": (x, mid, x + t, y + h),
             "c": (x + w - t, mid, x + w, y + h)}
    for seg in SEGMENTS[digit]:
        x0, y0, x1, y1 = boxes[seg]
        d.rectangle((x0, y0, x1 - 1, y1 - 1), fill=color)


def digit_corner(shape: str, x0: int, y0: int) -> tuple[int, int]:
    """Top-left corner of the digit on a shape whose box starts at (x0, y0): lower in a triangle's wide part."""
    return x0 + 9, y0 + (10 if shape == "triangle" else 6)


def draw_scene(rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    cols = int(rng.choice([2, 3]))
    img = Image.new("RGB", (cols * CELL, 2 * CELL), (245, 245, 245))
    d = ImageDraw.Draw(img)
    cells = [(r, c) for r in range(2) for c in range(cols)]
    n = int(rng.integers(1, min(4, len(cells)) + 1))
    chosen = sorted(rng.choice(len(cells), n, replace=False).tolist())
    objects = []
    for k in chosen:
        r, c = cells[k]
        shape = str(rng.choice(SHAPES))
        color = str(rng.choice(list(COLORS)))
        number = int(rng.integers(0, 10))
        x0, y0 = c * CELL + 3, r * CELL + 3
        box = (x0, y0, x0 + CELL - 7, y0 + CELL - 7)
        fill = COLORS[color]
        if shape == "circle":
            d.ellipse(box, fill=fill)
        elif shape == "square":
            d.rectangle(box, fill=fill)
        elif shape == "triangle":
            d.polygon([(x0 + 12, y0), (x0, y0 + 25), (x0 + 25, y0 + 25)], fill=fill)
        else:
            d.polygon([(x0 + 12, y0), (x0 + 25, y0 + 12), (x0 + 12, y0 + 25), (x0, y0 + 12)], fill=fill)
        draw_digit(d, *digit_corner(shape, x0, y0), number)
        objects.append({"shape": shape, "color": color, "number": number, "row": ROWS[r], "col": COLS[cols][c]})
    return img, objects


def make_question(rng: np.random.Generator, objects: list[dict]) -> tuple[str, str, str]:
    """(question type, question, answer); words separated by single spaces."""
    unique_shapes = [s for s in SHAPES if sum(o["shape"] == s for o in objects) == 1]
    unique_numbers = [n for n in range(10) if sum(o["number"] == n for o in objects) == 1]
    options = ["count", "shape", "number", "list"] + (["color"] if unique_shapes else []) + (
        ["where"] if unique_numbers else [])
    qtype = str(rng.choice(options))
    if qtype == "count":
        color = str(rng.choice(list(COLORS)))
        return qtype, f"how many {color} shapes are there ?", str(sum(o["color"] == color for o in objects))
    if qtype == "color":
        shape = str(rng.choice(unique_shapes))
        return qtype, f"what color is the {shape} ?", next(o["color"] for o in objects if o["shape"] == shape)
    if qtype == "shape":
        o = objects[int(rng.integers(len(objects)))]
        return qtype, f"what shape is at the {o['row']} {o['col']} ?", o["shape"]
    if qtype == "number":  # found by its shape (when unique) or by its cell
        if unique_shapes and rng.random() < 0.5:
            shape = str(rng.choice(unique_shapes))
            return qtype, f"what number is on the {shape} ?", str(next(o["number"] for o in objects
                                                                        if o["shape"] == shape))
        o = objects[int(rng.integers(len(objects)))]
        return qtype, f"what number is at the {o['row']} {o['col']} ?", str(o["number"])
    if qtype == "where":
        n = int(rng.choice(unique_numbers))
        o = next(o for o in objects if o["number"] == n)
        return qtype, f"where is the {n} ?", f"{o['row']} {o['col']}"
    items = [f"{{ shape : {o['shape']} , color : {o['color']} , number : {o['number']} }}" for o in objects]
    return qtype, "list the objects in reading order .", "[ " + " , ".join(items) + " ]"


def build_tokenizer(out_dir: str, words: list[str] = WORDS, qtypes: tuple[str, ...] = QTYPES) -> None:
    """A word-level HF tokenizer over `words` with Qwen-style specials, a mask token and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from bard_jax.quiet_transformers import import_transformers

    PreTrainedTokenizerFast = import_transformers().PreTrainedTokenizerFast

    vocab = {}
    for w in dict.fromkeys(words):
        vocab[w] = len(vocab)
    vocab["<unk>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(" ", behavior="removed"), pre_tokenizers.Split("\n", behavior="isolated")]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>")
    fast.add_special_tokens({"additional_special_tokens": SPECIALS})
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    ids = {t: fast.convert_tokens_to_ids(t) for t in SPECIALS}
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump({"image_processor_type": "Qwen2VLImageProcessor", "patch_size": 16, "temporal_patch_size": 2,
                   "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                   "size": {"shortest_edge": 64 * 64, "longest_edge": IMAGE_MAX_PIXELS}}, f, indent=2,
                  sort_keys=True)
    with open(os.path.join(out_dir, "video_preprocessor_config.json"), "w") as f:  # small clips for the tiny model
        json.dump({"video_processor_type": "Qwen3VLVideoProcessor", "patch_size": 16, "temporal_patch_size": 2,
                   "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "fps": 2,
                   "min_frames": 4, "max_frames": 16, "do_sample_frames": True,
                   "size": {"shortest_edge": 4 * 64 * 64, "longest_edge": 16 * 128 * 128}}, f, indent=2,
                  sort_keys=True)
    with open(os.path.join(out_dir, "task.json"), "w") as f:
        json.dump({"vocab_size": len(fast), "mask_token_id": ids["<|mask|>"], "eos_token_id": ids["<|im_end|>"],
                   "pad_token_id": ids["<|im_end|>"], "special_ids": ids, "question_types": list(qtypes)}, f,
                  indent=2, sort_keys=True)


def _attributes(hard: bool):
    from bard_jax.data import synthetic_attributes as a

    return SyntheticTask(a.WORDS, a.QTYPES_HARD if hard else a.QTYPES, lambda rng: a.draw_scene(rng, hard),
                         lambda rng, objects: a.make_question(rng, objects, hard))


class SyntheticTask(NamedTuple):
    words: list[str]  # the tokenizer's vocabulary (before the specials)
    qtypes: tuple[str, ...]
    draw_scene: Callable[[np.random.Generator], tuple[Image.Image, list[dict]]]
    make_question: Callable[[np.random.Generator, list[dict]], tuple[str, str, str]]


TASKS = {
    "digits": lambda: SyntheticTask(WORDS, QTYPES, draw_scene, make_question),
    "attributes": lambda: _attributes(False),
    "attributes_hard": lambda: _attributes(True),
}
DEFAULT_TASK = "digits"


def task_named(name: str) -> SyntheticTask:
    if name not in TASKS:
        raise DataError(f"unknown synthetic task {name!r} (data.synthetic_task, --task); known: {sorted(TASKS)}")
    return TASKS[name]()


def write_split(out: str, name: str, n: int, rng: np.random.Generator, start: int,
                task: SyntheticTask | None = None) -> None:
    task = task or TASKS[DEFAULT_TASK]()
    with open(os.path.join(out, f"{name}.jsonl"), "w") as f:
        for i in range(n):
            img, objects = task.draw_scene(rng)
            qtype, question, answer = task.make_question(rng, objects)
            rel = f"images/{name}_{start + i:06d}.png"
            img.save(os.path.join(out, rel), optimize=False)
            record = {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "image": rel}, {"type": "text", "text": question}]},
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                ],
                "meta": {"qtype": qtype, "answer": answer},
            }
            f.write(json.dumps(record, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------------ the output folder
FORMAT_VERSION = 1  # bump when the generator's output changes for the same settings: older folders are regenerated
SETTINGS_FILE = "settings.json"
GENERATOR = "bard_jax.data.synthetic"
LAYOUT = ("tokenizer", "images", "train.jsonl", "eval.jsonl", SETTINGS_FILE)
IMAGE_NAME = re.compile(r"(train|eval)_\d{6}\.png")


def settings_of(n: int, seed: int, n_eval: int, task: str = DEFAULT_TASK) -> dict:
    """What settings.json records for these settings (compared when a folder is reused)."""
    if n < 1:
        raise DataError(f"synthetic data needs at least 1 training sample (--n, data.synthetic_n), got {n}")
    if n_eval < 0:
        raise DataError(f"synthetic data needs >= 0 eval samples (--n-eval, data.synthetic_eval_n), got {n_eval}")
    if seed < 0:
        raise DataError(f"the synthetic data seed must be >= 0 (--seed, data.synthetic_seed), got {seed}")
    task_named(task)
    return {"generator": GENERATOR, "format": FORMAT_VERSION, "n": n, "n_eval": n_eval, "seed": seed, "task": task}


def _describe(settings: dict) -> str:
    return ", ".join(f"{k}={settings.get(k)}" for k in ("n", "n_eval", "seed", "format", "task"))


def read_settings(path: str) -> dict | None:
    """The settings this generator recorded in `path`, or None (no settings file, or not this generator's)."""
    try:
        with open(os.path.join(path, SETTINGS_FILE)) as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict) or found.get("generator") != GENERATOR:
        return None
    return {"task": DEFAULT_TASK, **found}  # folders made before there were several tasks hold the digits task


def is_synthetic_output(path: str) -> bool:
    """Whether `path` may be replaced by a new generation: missing, empty, marked by this generator's settings
    file, or with exactly the layout this generator writes (an older version's output or an interrupted one)."""
    if not os.path.lexists(path):
        return True
    if not os.path.isdir(path):
        return False
    names = set(os.listdir(path))
    if not names or read_settings(path) is not None:
        return True
    if not names <= set(LAYOUT) or not {"tokenizer", "images"} <= names:
        return False
    images = os.path.join(path, "images")
    return os.path.isdir(images) and all(IMAGE_NAME.fullmatch(f) for f in os.listdir(images))


def _refuse(path: str) -> DataError:
    what = "is not a directory" if os.path.lexists(path) and not os.path.isdir(path) else (
        f"is not synthetic data (no {SETTINGS_FILE} of {GENERATOR}, and not its layout: tokenizer/, images/, "
        f"train.jsonl, eval.jsonl)")
    return DataError(f"{path} {what}; refusing to replace it with generated data: choose another output directory "
                     f"(data.synthetic_dir, --out) or move it away yourself")


def why_not_reusable(path: str, n: int, seed: int, n_eval: int, task: str = DEFAULT_TASK) -> str | None:
    """None when `path` holds complete synthetic data made with these settings, else what is wrong with it."""
    want = settings_of(n, seed, n_eval, task)
    if not os.path.isdir(path):
        return "does not exist"
    found = read_settings(path)
    if found is None:
        return f"has no {SETTINGS_FILE} (an interrupted generation, or one by an older version)"
    if {k: found.get(k) for k in want} != want:
        return f"was made with {_describe(found)}, not the requested {_describe(want)}"
    problems = []
    for name, count in (("train.jsonl", n), ("eval.jsonl", n_eval)):
        try:
            with open(os.path.join(path, name), "rb") as f:
                lines = sum(1 for _ in f)
        except OSError:
            problems.append(f"no {name}")
            continue
        if lines != count:
            problems.append(f"{name} has {lines} samples, not {count}")
    for name in ("tokenizer.json", "task.json", "preprocessor_config.json"):
        if not os.path.isfile(os.path.join(path, "tokenizer", name)):
            problems.append(f"no tokenizer/{name}")
    images = os.path.join(path, "images")
    count = len(os.listdir(images)) if os.path.isdir(images) else 0
    if count != n + n_eval:
        problems.append(f"{count} images, not {n + n_eval}")
    return f"is incomplete ({', '.join(problems)})" if problems else None


def generate(out: str, n: int, seed: int = 0, n_eval: int = 200, task: str = DEFAULT_TASK) -> str:
    """Write the task into `out` (replacing an earlier synthetic output there; anything else is refused).

    The files are written into a temporary folder next to `out` and renamed into place when all are complete
    (`bard_jax.atomic_dir`, which also removes what killed generations left)."""
    settings = settings_of(n, seed, n_eval, task)
    spec = task_named(task)
    if not is_synthetic_output(os.path.realpath(out)):
        raise _refuse(out)
    with atomic_dir(os.path.realpath(out)) as tmp:
        os.mkdir(os.path.join(tmp, "images"))
        build_tokenizer(os.path.join(tmp, "tokenizer"), spec.words, spec.qtypes)
        write_split(tmp, "train", n, np.random.default_rng([seed, 0]), 0, spec)
        write_split(tmp, "eval", n_eval, np.random.default_rng([seed, 1]), 0, spec)
        with open(os.path.join(tmp, SETTINGS_FILE), "w") as f:  # last: its presence says the rest is complete
            json.dump(settings, f, indent=2, sort_keys=True)
    return out


def ensure(out: str, n: int, seed: int = 0, n_eval: int = 200, task: str = DEFAULT_TASK) -> str:
    """`out`, holding complete synthetic data made with these settings: reused when it already does, generated
    when missing, regenerated (with a note on stderr) when its settings differ or it is incomplete."""
    settings_of(n, seed, n_eval, task)
    clean_stale_temp_dirs(os.path.realpath(out))  # a generation killed mid-swap may have left `out` aside
    problem = why_not_reusable(out, n, seed, n_eval, task)
    if problem is None:
        return out
    if os.path.isdir(out) and os.listdir(out):
        if not is_synthetic_output(os.path.realpath(out)):
            raise _refuse(out)
        print(f"synthetic data at {out} {problem}; regenerating", file=sys.stderr, flush=True)
    return generate(out, n, seed, n_eval, task)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bard_jax.data.synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (replaced if it holds earlier synthetic data)")
    p.add_argument("--n", type=int, default=2000, help="training samples (>= 1)")
    p.add_argument("--n-eval", type=int, default=200, help="held-out samples (>= 0)")
    p.add_argument("--seed", type=int, default=0, help="the same settings give the same bytes")
    p.add_argument("--task", default=DEFAULT_TASK, choices=sorted(TASKS), help="which task (default: digits)")
    p.add_argument(cli.DEBUG_FLAG, action="store_true", help=cli.DEBUG_HELP)
    a = p.parse_args(argv)
    generate(a.out, a.n, a.seed, a.n_eval, a.task)
    print(f"wrote {a.task}: {a.n} train and {a.n_eval} eval samples to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main, prog="python -m bard_jax.data.synthetic"))
