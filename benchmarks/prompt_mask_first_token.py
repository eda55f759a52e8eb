"""What the block-causal prompt mask alone does to a model: the first answer token of each held-out question,
read at the last prompt position, under the token-causal prompt mask and under the block-causal one.

BARD prefills the prompt bidirectionally inside b-chunks (spec: block ids i // b from index 0), where the AR source
was trained token-causal. Feeding an AR source its prompt both ways measures how much of the AR -> B4 bridge's
loss the mask change costs before any diffusion training. Prompt only, teacher-forced: no answer token is fed, so
nothing leaks through the bidirectional chunks.

  python benchmarks/prompt_mask_first_token.py --model runs/minibard/ar [--data runs/minibard/data] [--blocks 4 32]
"""

from __future__ import annotations

import argparse
import collections

import numpy as np

import bard_jax as bj
from bard_jax.minibard import evaluate
from bard_jax.train.setup import resolve_weights


def first_token_accuracy(model: bj.Model, ev: evaluate.EvalSet, block_size: int | None, batch: int) -> dict[str, float]:
    """Per question type (and "all"): share of questions whose first answer token is the argmax at the last prompt
    position, with `block_size=None` (token-causal) or the block-causal prompt mask of that size."""
    hits, counts = collections.Counter(), collections.Counter()
    for group in ev.groups:
        for start in range(0, len(group.answers), batch):
            rows = slice(start, start + batch)
            n = len(group.answers[rows])
            pixels_pd = group.pixels_npd[rows].reshape(-1, group.pixels_npd.shape[-1])
            grids_b3 = np.tile(np.asarray(group.grid, np.int64), (n, 1))
            logits_blv = bj.forward(model, group.ids_bl[rows], attention_mask=group.mask_bl[rows],
                                    pixel_values=pixels_pd, image_grid_thw=grids_b3, block_size=block_size)
            predicted_b = np.asarray(logits_blv[:, -1].argmax(-1))
            for i in range(n):
                qtype = group.qtypes[start + i]
                counts[qtype] += 1
                hits[qtype] += int(predicted_b[i] == group.answers[start + i][0])
    out = {q: hits[q] / counts[q] for q in sorted(counts)}
    out["all"] = sum(hits.values()) / sum(counts.values())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="export dir or a training workdir (its export/ is used)")
    p.add_argument("--data", default="runs/minibard/data", help="the task directory (eval.jsonl, tokenizer/)")
    p.add_argument("--blocks", type=int, nargs="+", default=[4, 32], help="block sizes of the block-causal mask")
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    model = bj.load_pretrained(resolve_weights(args.model))
    ev = evaluate.load_eval_set(args.data)
    print(f"{ev.size} held-out questions, first answer token at the last prompt position (exact match of it, %)")
    for block_size in [None, *args.blocks]:
        acc = first_token_accuracy(model, ev, block_size, args.batch)
        name = "token-causal" if block_size is None else f"block-causal b={block_size}"
        print(f"{name:>20}: all {100 * acc.pop('all'):.1f}  " +
              "  ".join(f"{q} {100 * v:.1f}" for q, v in acc.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
