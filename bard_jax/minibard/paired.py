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

import bard_jax as bj
from bard_jax.minibard import evaluate, report, stages
from bard_jax.minibard.__main__ import MAX_NEW_TOKENS, REFERENCE, sampling_config

DEFAULT_PAIRS = ("ar:pbm_b4", "pbm_b4:pbm_b32", "pbm_b32:swd_b32", "pbm_b4:swd_b32", "ar:swd_b32")
sign_test_p = report.sign_test_p


def settings_of(stage: stages.Stage, model_dir: str, ev: evaluate.EvalSet, threshold: float):
    """The reference setting for `stage` (at `threshold`)."""
    if stage.kind == "ar":
        return evaluate.ar_settings(model_dir, MAX_NEW_TOKENS)
    setting = dict(REFERENCE, threshold=threshold, denoising_steps=stage.block_size)
    return evaluate.diffusion_settings(model_dir, sampling_config(stage, setting, ev))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bard_jax.minibard.paired", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="runs/minibard", help="a Mini-BARD workdir (its stages and data/)")
    p.add_argument("--pairs", nargs="+", default=list(DEFAULT_PAIRS), help="A:B stage names")
    p.add_argument("--threshold", type=float, default=REFERENCE["threshold"])
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    known = {s.name: s for s in stages.chain() + stages.ablations()}
    pairs = [tuple(s.split(":")) for s in args.pairs]
    if any(len(pair) != 2 or not set(pair) <= set(known) for pair in pairs):
        p.error(f"--pairs take A:B stage names from {list(known)}, got {args.pairs}")
    eval_dir = os.path.join(args.workdir, "eval_paired")
    shutil.rmtree(eval_dir, ignore_errors=True)  # the stages may have been retrained since the last comparison
    sets = evaluate.load_eval_sets(os.path.join(args.workdir, "data"), eval_dir)
    exact = {}
    for name in dict.fromkeys(n for pair in pairs for n in pair):
        model_dir = os.path.join(args.workdir, name, "export")
        settings = settings_of(known[name], model_dir, sets["short"], args.threshold)
        by_length = evaluate.decode_sets(bj.load_pretrained(model_dir), sets, settings, name, args.batch)
        exact[(name, 0)] = evaluate.exact_by_length(by_length)
        em = exact[(name, 0)]["all"].mean()
        half = 1.96 * math.sqrt(em * (1 - em) / len(exact[(name, 0)]["all"]))
        print(f"{name:>8}: exact match {100 * em:.2f}% (+-{100 * half:.1f} at 95%, binomial)", flush=True)
    rows = report.paired_table(exact, [((a, 0), (b, 0)) for a, b in pairs])
    print("\n" + "\n".join(report._paired_markdown(rows)))
    return 0


if __name__ == "__main__":
    from bard_jax import cli

    raise SystemExit(cli.run(main, prog="python -m bard_jax.minibard.paired"))
