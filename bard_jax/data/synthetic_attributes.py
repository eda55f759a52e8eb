"""The `attributes` synthetic task (Mini-BARD v2): scenes whose every attribute a small vision tower sees easily,
and questions of which at least half have long structured answers.

A scene is a 2 x 2 or 2 x 3 grid of 32-pixel cells (one merged vision token each) holding 2 to 5 objects. An object
has a shape (circle, square, triangle, diamond), a colour (red, green, blue, yellow, purple), a size (big: a 26-px
box; small: a 14-px box, centred) and a fill (solid, or an outline: a 3-px stroke, 2 px on small shapes, so that a
small triangle's outline still leaves its middle empty). Question types (a fixed mix):

  list      30%  "list the objects in reading order ."   -> "[ { top left : big red solid circle } , { ... } ]"
  columns   20%  "list the objects column by column ."   -> the same entries, column by column
  count     10%  "how many red shapes are there ?" / "how many circles are there ?"   -> "2"
  attribute 10%  "what color is the shape at the top left ?" / "what shape is at the top left ?"   -> "red"
  describe  10%  "describe the shape at the bottom right ."                              -> "small blue outline square"
  where     10%  "where is the red circle ?" (a colour + shape that occurs once)         -> "top left"
  find      10%  "what size is the red circle ?" / "what fill is ..." (found by content) -> "big"

A list entry is 9 tokens, so a list answer is 10 n + 1 tokens: 21 to 51 for 2 to 5 objects. Reading order is row
by row, left to right. The hard mode (`attributes_hard`) also draws a digit on every big object: its list entry ends
with the digit ("{ top left : big red solid circle 7 }"), and a `number` question ("what number is on the red circle
?") replaces 5% of the list questions and 5% of the column questions.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from bard_jax.data.synthetic import digit_corner, draw_digit  # the seven-segment glyphs of the digits task

SHAPES = ("circle", "square", "triangle", "diamond")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds"}
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30),
          "purple": (150, 60, 190)}
SIZES = ("big", "small")
FILLS = ("solid", "outline")
ROWS = ("top", "bottom")
COLS = {2: ("left", "right"), 3: ("left", "middle", "right")}
CELL = 32
BACKGROUND = (245, 245, 245)
QTYPES = ("list", "columns", "count", "attribute", "describe", "where", "find")
QTYPES_HARD = QTYPES + ("number",)
WEIGHTS = {"list": 0.30, "columns": 0.20, "count": 0.10, "attribute": 0.10, "describe": 0.10, "where": 0.10,
           "find": 0.10}
WEIGHTS_HARD = dict(WEIGHTS, list=0.25, columns=0.15, number=0.10)
WORDS = (["user", "assistant", "system", "\n", "how", "many", "are", "there", "shapes", "what", "color", "is", "the",
          "shape", "size", "fill", "at", "where", "describe", "list", "objects", "in", "reading", "order", "column",
          "by", "number", "on", "?", ".", ",", ":", "[", "]", "{", "}"]
         + list(SHAPES) + list(PLURALS.values()) + list(COLORS) + list(SIZES) + list(FILLS)
         + ["top", "bottom", "left", "middle", "right"] + [str(i) for i in range(10)])


def _box(c: int, r: int, size: str) -> tuple[int, int, int, int]:
    m = 3 if size == "big" else 9
    return c * CELL + m, r * CELL + m, (c + 1) * CELL - m - 1, (r + 1) * CELL - m - 1


def _draw_object(d: ImageDraw.ImageDraw, box: tuple[int, int, int, int], shape: str, rgb, solid: bool) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    kw = {"fill": rgb} if solid else {"outline": rgb, "width": 3 if x1 - x0 > 20 else 2}
    if shape == "circle":
        d.ellipse(box, **kw)
    elif shape == "square":
        d.rectangle(box, **kw)
    elif shape == "triangle":
        d.polygon([(cx, y0), (x1, y1), (x0, y1)], **kw)
    else:
        d.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], **kw)


def draw_scene(rng: np.random.Generator, hard: bool = False) -> tuple[Image.Image, list[dict]]:
    """A scene and its objects in reading order (each: shape, color, size, fill, row, col, and in the hard mode
    `number`, a digit on big objects or None)."""
    cols = int(rng.choice([2, 3]))
    img = Image.new("RGB", (cols * CELL, 2 * CELL), BACKGROUND)
    d = ImageDraw.Draw(img)
    cells = [(r, c) for r in range(2) for c in range(cols)]
    n = int(rng.integers(2, min(5, len(cells)) + 1))
    objects = []
    for k in sorted(rng.choice(len(cells), n, replace=False).tolist()):
        r, c = cells[k]
        o = {"shape": str(rng.choice(SHAPES)), "color": str(rng.choice(list(COLORS))), "size": str(rng.choice(SIZES)),
             "fill": str(rng.choice(FILLS)), "row": ROWS[r], "col": COLS[cols][c], "number": None}
        _draw_object(d, _box(c, r, o["size"]), o["shape"], COLORS[o["color"]], o["fill"] == "solid")
        if hard and o["size"] == "big":
            o["number"] = int(rng.integers(0, 10))
            x, y = digit_corner(o["shape"], c * CELL + 3, r * CELL + 3)
            # White on a solid shape, dark inside an outline.
            draw_digit(d, x, y, o["number"], color=(255, 255, 255) if o["fill"] == "solid" else (30, 30, 30))
        objects.append(o)
    return img, objects


def describe(o: dict) -> str:
    return f"{o['size']} {o['color']} {o['fill']} {o['shape']}"


def entry(o: dict) -> str:
    digit = f" {o['number']}" if o.get("number") is not None else ""
    return f"{{ {o['row']} {o['col']} : {describe(o)}{digit} }}"


def _by_content(objects: list[dict]) -> list[dict]:
    """Objects whose colour + shape occurs once in the scene (they can be named by content)."""
    return [o for o in objects if sum(p["color"] == o["color"] and p["shape"] == o["shape"] for p in objects) == 1]


def make_question(rng: np.random.Generator, objects: list[dict], hard: bool = False) -> tuple[str, str, str]:
    """(question type, question, answer); words separated by single spaces."""
    weights = dict(WEIGHTS_HARD if hard else WEIGHTS)
    named = _by_content(objects)
    numbered = [o for o in named if o["number"] is not None]
    if not named:
        weights.pop("where")
        weights.pop("find")
    if "number" in weights and not numbered:
        weights.pop("number")
    names = list(weights)
    p = np.asarray([weights[k] for k in names])
    qtype = str(rng.choice(names, p=p / p.sum()))
    if qtype == "list":
        return qtype, "list the objects in reading order .", "[ " + " , ".join(entry(o) for o in objects) + " ]"
    if qtype == "columns":
        order = sorted(objects, key=lambda o: (COLS[3].index(o["col"]), ROWS.index(o["row"])))
        return qtype, "list the objects column by column .", "[ " + " , ".join(entry(o) for o in order) + " ]"
    if qtype == "count":
        kind = str(rng.choice(["color", "shape", "size", "fill"]))
        if kind == "shape":
            value = str(rng.choice(SHAPES))
            return qtype, f"how many {PLURALS[value]} are there ?", str(sum(o["shape"] == value for o in objects))
        value = str(rng.choice({"color": list(COLORS), "size": SIZES, "fill": FILLS}[kind]))
        return qtype, f"how many {value} shapes are there ?", str(sum(o[kind] == value for o in objects))
    if qtype in ("attribute", "describe"):
        o = objects[int(rng.integers(len(objects)))]
        at = f"{o['row']} {o['col']}"
        if qtype == "describe":
            return qtype, f"describe the shape at the {at} .", describe(o)
        kind = str(rng.choice(["color", "shape", "size", "fill"]))
        if kind == "shape":
            return qtype, f"what shape is at the {at} ?", o["shape"]
        return qtype, f"what {kind} is the shape at the {at} ?", o[kind]
    if qtype == "number":
        o = numbered[int(rng.integers(len(numbered)))]
        return qtype, f"what number is on the {o['color']} {o['shape']} ?", str(o["number"])
    o = named[int(rng.integers(len(named)))]
    if qtype == "where":
        return qtype, f"where is the {o['color']} {o['shape']} ?", f"{o['row']} {o['col']}"
    kind = str(rng.choice(["size", "fill"]))
    return qtype, f"what {kind} is the {o['color']} {o['shape']} ?", o[kind]
