"""`python -m bard_jax.eval run|score`: benchmark a checkpoint as the release's lmms-eval setup does.

  python -m bard_jax.eval run --model DIR --data-root ROOT --tasks mmmu_val,mme,... --out OUT \\
      [--decoder diffusion|ar] [--block-size 4 --steps 4 --strategy low_confidence_dynamic --threshold 1.0] \\
      [--shift-labels] \\
      [--batch-size N] [--limit N] [--min-pixels 65536 --max-pixels 4194304] [--dtype bfloat16|float32]
  python -m bard_jax.eval score --task TASK --data-root ROOT --predictions FILE

`run` writes OUT/<task>/samples.jsonl (one line per document, appended as batches finish: rerunning the same
command resumes), OUT/<task>/run.json (the settings) and, after each task, OUT/results.json and OUT/results.md (the
paper's table). The defaults are the release's eval settings. `score` prints the metrics of a predictions JSONL
(doc_id = row index in the split, prediction) as one JSON object on the last line.
A bad input (unknown task, missing dataset, not a checkpoint, an OUT holding a run of other settings) is one line
on stderr and exit status 1 (`--debug` or BARD_JAX_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import sys

from bard_jax import cli
from bard_jax.eval import settings as S

PROG = "python -m bard_jax.eval"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="decode and score tasks")
    r.add_argument("--model", required=True, help="HF or bard_jax checkpoint directory with its tokenizer files")
    r.add_argument("--data-root", required=True, help="folder holding the hub snapshots (ROOT/<owner>/<name>/...)")
    from bard_jax.eval.tasks import TASKS

    r.add_argument("--tasks", required=True, help=f"comma-separated task names ({', '.join(TASKS)}), or 'all' (the "
                   "paper's seven)")
    r.add_argument("--out", required=True, help="output directory (a rerun of the same settings resumes)")
    r.add_argument("--decoder", default="diffusion", choices=S.DECODERS)
    r.add_argument("--block-size", type=_positive, default=S.DEFAULT_BLOCK_SIZE)
    r.add_argument("--steps", type=_positive, default=None, help="denoising steps per block (default: block size)")
    r.add_argument("--strategy", default=S.DEFAULT_STRATEGY,
                   choices=["low_confidence_dynamic", "low_confidence_static"])
    r.add_argument("--threshold", type=float, default=S.DEFAULT_THRESHOLD, help="confidence threshold")
    r.add_argument("--shift-labels", action="store_true",
                   help="decode a model trained with the label shift (objective.shift_labels); default: no shift")
    r.add_argument("--batch-size", type=_positive, default=1, help="documents per decode call")
    r.add_argument("--limit", type=_positive, default=None, help="the first N documents of each split only")
    r.add_argument("--min-pixels", type=_positive, default=None,
                   help=f"default: {S.DEFAULT_MIN_PIXELS} (the release's); the checkpoint's own for --tasks synthetic")
    r.add_argument("--max-pixels", type=_positive, default=None,
                   help=f"default: {S.DEFAULT_MAX_PIXELS} (the release's); the checkpoint's own for --tasks synthetic")
    r.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    r.add_argument("--max-new-tokens", type=_positive, default=None,
                   help="override every task's answer length (smoke runs only: not the paper's setting)")
    r.add_argument(cli.DEBUG_FLAG, action="store_true", help=cli.DEBUG_HELP)
    s = sub.add_parser("score", help="score a predictions JSONL")
    s.add_argument("--task", required=True)
    s.add_argument("--data-root", required=True)
    s.add_argument("--predictions", required=True, help="JSONL lines with doc_id and prediction")
    s.add_argument(cli.DEBUG_FLAG, action="store_true", help=cli.DEBUG_HELP)
    return p.parse_args(argv)


def task_names(text: str) -> list[str]:
    if text.strip() == "all":
        from bard_jax.eval.results import PAPER_COLUMNS

        return [t for t, _ in PAPER_COLUMNS]
    return [name.strip() for name in text.split(",") if name.strip()]


def pixel_range(names: list[str], min_pixels: int | None, max_pixels: int | None) -> tuple[int | None, int | None]:
    """The image pixel range of a run: the given bounds, else the release's, except for the synthetic task alone,
    whose models train at its own small image sizes (None: the checkpoint's processor settings)."""
    if set(names) == {"synthetic"}:
        return min_pixels, max_pixels
    return min_pixels or S.DEFAULT_MIN_PIXELS, max_pixels or S.DEFAULT_MAX_PIXELS


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.command == "score":
        from bard_jax.eval.rescore import score_predictions

        metrics, n, n_split = score_predictions(args.task, args.data_root, args.predictions)
        print(f"{args.task}: {n} of {n_split} documents scored", file=sys.stderr)
        print(json.dumps(metrics))
        return cli.EXIT_OK
    from bard_jax.eval.errors import EvalError
    from bard_jax.eval.runner import run

    names = task_names(args.tasks)
    if not names:
        raise EvalError(f"--tasks {args.tasks!r} names no task")
    min_pixels, max_pixels = pixel_range(names, args.min_pixels, args.max_pixels)
    if min_pixels and max_pixels and min_pixels > max_pixels:
        given = " and ".join(f"--{k}-pixels {v}" for k, v in (("min", args.min_pixels), ("max", args.max_pixels)) if v)
        raise EvalError(f"{given}: the image pixel range is empty (min {min_pixels} > max {max_pixels}; defaults "
                        f"{S.DEFAULT_MIN_PIXELS} / {S.DEFAULT_MAX_PIXELS})")
    settings = S.RunSettings(
        model=args.model, decoder=args.decoder, block_size=args.block_size, denoising_steps=args.steps,
        strategy=args.strategy, confidence_threshold=args.threshold, max_new_tokens=args.max_new_tokens,
        min_pixels=min_pixels, max_pixels=max_pixels, dtype=args.dtype, shift_labels=args.shift_labels,
    )
    summaries = run(settings, args.data_root, names, args.out, batch_size=args.batch_size,
                    limit=args.limit)
    from bard_jax.eval.results import markdown

    print(markdown(summaries), end="")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=PROG))
