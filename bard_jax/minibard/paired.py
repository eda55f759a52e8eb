"""Are two Mini-BARD models' exact-match figures different beyond chance? A paired comparison on the held-out set.

Every model of a Mini-BARD workdir answers the same held-out questions, so two models can be compared question by
question: the questions only A gets right and those only B gets right decide the difference. Under "no difference"
each such discordant question is a fair coin, which gives an exact two-sided sign test (McNemar's exact test). Each
model is decoded at the reference setting (the AR source with KV-cached greedy decoding, a diffusion model
dynamically at threshold 0.9 with block size from its stage name).

  python -m bard_jax.minibard.paired --workdir runs/minibard [--pairs ar:pbm_b4 pbm_b32:swd_b32 ...]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil

import numpy as np

import bard_jax as bj
from bard_jax.minibard import evaluate, stages
from bard_jax.minibard.__main__ import MAX_NEW_TOKENS, REFERENCE

DEFAULT_PAIRS = ("ar:pbm_b4", "pbm_b4:pbm_b32", "pbm_b32:swd_b32", "pbm_b4:swd_b32", "ar:swd_b32")


def sign_test_p(a_only: int, b_only: int) -> float:
    """Exact two-sided p-value of `a_only` vs `b_only` discordant questions under a fair coin."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1)) / 2**n
    return min(1.0, 2 * tail)


def settings_of(stage: stages.Stage, model_dir: str, ev: evaluate.EvalSet, threshold: float):
    """The reference setting for `stage` (at `threshold`)."""
    if stage.kind == "ar":
        return evaluate.ar_settings(model_dir, MAX_NEW_TOKENS)
    cfg = bj.SamplingConfig(max_new_tokens=MAX_NEW_TOKENS, block_size=stage.block_size,
                            denoising_steps=stage.block_size, strategy=REFERENCE["strategy"],
                            confidence_threshold=threshold, commit=REFERENCE["commit"],
                            mask_token_id=ev.mask_token_id, eos_token_id=ev.eos_token_id)
    return evaluate.diffusion_settings(model_dir, cfg)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bard_jax.minibard.paired", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="runs/minibard", help="a Mini-BARD workdir (its stages and data/)")
    p.add_argument("--pairs", nargs="+", default=list(DEFAULT_PAIRS), help="A:B stage names")
    p.add_argument("--threshold", type=float, default=REFERENCE["threshold"])
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    chain = {s.name: s for s in stages.chain()}
    pairs = [tuple(s.split(":")) for s in args.pairs]
    if any(len(pair) != 2 or not set(pair) <= set(chain) for pair in pairs):
        p.error(f"--pairs take A:B stage names from {list(chain)}, got {args.pairs}")
    eval_dir = os.path.join(args.workdir, "eval_paired")
    shutil.rmtree(eval_dir, ignore_errors=True)  # the stages may have been retrained since the last comparison
    ev = evaluate.load_eval_set(os.path.join(args.workdir, "data"), eval_dir)
    exact = {}
    for name in dict.fromkeys(n for pair in pairs for n in pair):
        model_dir = os.path.join(args.workdir, name, "export")
        settings = settings_of(chain[name], model_dir, ev, args.threshold)
        samples = evaluate.decode_all(bj.load_pretrained(model_dir), ev, settings, name, args.batch)
        exact[name] = evaluate.exact_per_question(samples)
        em = exact[name].mean()
        half = 1.96 * math.sqrt(em * (1 - em) / ev.size)
        print(f"{name:>8}: exact match {100 * em:.2f}% (+-{100 * half:.1f} at 95%, binomial)", flush=True)
    print(f"\n{ev.size} held-out questions, paired (B - A; only-A / only-B right; exact sign test)")
    print("| A | B | B - A points | only A right | only B right | p |\n|---|---|---|---|---|---|")
    for a, b in pairs:
        a_only = int(np.sum(exact[a] & ~exact[b]))
        b_only = int(np.sum(exact[b] & ~exact[a]))
        print(f"| {a} | {b} | {100 * (b_only - a_only) / ev.size:+.2f} | {a_only} | {b_only} | "
              f"{sign_test_p(a_only, b_only):.3f} |")
    return 0


if __name__ == "__main__":
    from bard_jax import cli

    raise SystemExit(cli.run(main, prog="python -m bard_jax.minibard.paired"))
