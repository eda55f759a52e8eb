"""What a Mini-BARD model gets wrong: AR-decodes the held-out questions and sorts the wrong answers.

The held-out scenes are re-drawn from the task's seed (the generator is deterministic), so each question comes with
its objects. For shape, number, colour and where questions a wrong answer is either an attribute of another object
in the same scene (the model read the image but looked at the wrong object) or not in the scene at all (it did not
read the attribute). Also: accuracy by the number of objects in the scene, the row and column of wrong where
answers, and per-field accuracy of the list answers.

  python benchmarks/answer_errors.py --model runs/minibard/ar [--data runs/minibard/data] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re

import numpy as np

import bard_jax as bj
from bard_jax.data import synthetic
from bard_jax.minibard import evaluate
from bard_jax.train.setup import resolve_weights

ATTRIBUTE = {"shape": lambda o: o["shape"], "color": lambda o: o["color"], "number": lambda o: str(o["number"]),
             "where": lambda o: f"{o['row']} {o['col']}"}
LIST_ITEM = re.compile(r"shape : (\w+) , color : (\w+) , number : (\w+)")


def held_out_scenes(data_dir: str, seed: int) -> list[tuple[list[dict], str, str, str]]:
    """(objects, question, answer, type) of every eval.jsonl line, re-drawn as `synthetic.generate` drew them."""
    rng = np.random.default_rng([seed, 1])
    out = []
    with open(os.path.join(data_dir, "eval.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            _, objects = synthetic.draw_scene(rng)
            qtype, question, answer = synthetic.make_question(rng, objects)
            if answer != rec["meta"]["answer"]:
                raise SystemExit(f"eval.jsonl was not generated with seed {seed}")
            out.append((objects, question, answer, qtype))
    return out


def decode_all(model: bj.Model, ev: evaluate.EvalSet) -> list[tuple[str, str, str, str]]:
    """(type, prompt text, predicted answer, reference answer) per question, AR greedy."""
    decode = evaluate.ar_decoder(model, ev, 64)
    tok = ev.tokenizer
    rows = []
    for group in ev.groups:
        for start, n, ids, mask, pixels, grids in evaluate._batches(group, 32):
            tokens = np.asarray(decode(ids, mask, pixels, grids)[0])
            for r in range(n):
                row = tokens[r].tolist()
                row = row[: row.index(ev.eos_token_id)] if ev.eos_token_id in row else row
                rows.append((group.qtypes[start + r], tok.decode(ids[r][mask[r]].tolist()), tok.decode(row).strip(),
                             tok.decode(group.answers[start + r][:-1]).strip()))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an export directory or a training workdir")
    p.add_argument("--data", default=os.path.join("runs", "minibard", "data"))
    p.add_argument("--seed", type=int, default=0, help="the task's generation seed")
    a = p.parse_args(argv)
    path = resolve_weights(a.model)
    scenes = held_out_scenes(a.data, a.seed)
    rows = decode_all(bj.load_pretrained(path), evaluate.load_eval_set(a.data))
    counts: collections.Counter = collections.Counter()
    by_objects: collections.Counter = collections.Counter()
    unused = list(range(len(scenes)))
    for qtype, prompt, pred, ref in rows:
        # Groups reorder the questions: match each back to its scene by question text, answer and type.
        i = next(i for i in unused if scenes[i][1] in prompt and scenes[i][2] == ref and scenes[i][3] == qtype)
        unused.remove(i)
        objects = scenes[i][0]
        right = pred == ref
        counts[qtype, "right" if right else "wrong"] += 1
        by_objects[qtype, len(objects), right] += 1
        if right:
            continue
        if qtype in ATTRIBUTE:
            seen = {ATTRIBUTE[qtype](o) for o in objects}
            counts[qtype, "wrong: another object's" if pred in seen else "wrong: not in the scene"] += 1
        if qtype == "where" and len(pred.split()) == 2:
            counts[qtype, "wrong: row right"] += pred.split()[0] == ref.split()[0]
            counts[qtype, "wrong: column right"] += pred.split()[1] == ref.split()[1]
        if qtype == "list":
            for got, want in zip(LIST_ITEM.findall(pred), LIST_ITEM.findall(ref)):
                counts[qtype, "wrong: items compared"] += 1
                for name, g, w in zip(("shape", "color", "number"), got, want):
                    counts[qtype, f"wrong: item {name} right"] += g == w
    print(f"model {path}, {len(rows)} held-out questions")
    for key in sorted(counts):
        print(f"{key[0]:7s} {key[1]:28s} {counts[key]}")
    print("right / total by objects in the scene:")
    for qtype in sorted({k[0] for k in by_objects}):
        cells = [f"{n}: {by_objects[qtype, n, True]}/{by_objects[qtype, n, True] + by_objects[qtype, n, False]}"
                 for n in range(1, 5)]
        print(f"{qtype:7s} " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
