"""The command line of `bard_jax.data.convert` (see the package docstring).

Exit status: 0 when every shard converted; 1 for a mistake in the command or the input, reported in one line
without a traceback (2 for a malformed argument, argparse's own status); 3 when some shard could not be read (the
rest is converted, stats.json lists the failures, and rerunning the same command retries them).
"""

from __future__ import annotations

import argparse
import os
import sys

from bard_jax import cli
from bard_jax.data.convert import SOURCES, convert
from bard_jax.data.convert.errors import EXIT_FAILED_SHARDS
from bard_jax.data.convert.manifest import STATS
from bard_jax.data.convert.output import IMAGE_FORMATS

PROG = "python -m bard_jax.data.convert"


def _subsets(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated subset names")
    return names


def _summary(stats: dict, out: str) -> str:
    t = stats["totals"]
    dropped = ", ".join(f"{n} {reason}" for reason, n in t["dropped"].items()) or "none"
    return (f"{t['kept']} of {t['rows']} rows kept in {t['shards']} shards (dropped: {dropped}); "
            f"{t['images']} images, {t['videos']} videos; counts in {os.path.join(out, STATS)}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=sys.modules["bard_jax.data.convert"].__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=list(SOURCES), help="the dataset --src holds")
    p.add_argument("--src", required=True, help="the downloaded dataset (the hub's folder layout)")
    p.add_argument("--out", required=True, help="output folder (new, empty, or an earlier conversion to resume)")
    p.add_argument("--subsets", type=_subsets, help="comma-separated subset folders to convert (default: all)")
    p.add_argument("--workers", type=int, default=0, help="processes converting shards (0 or 1: this process)")
    p.add_argument("--limit", type=int, help="convert at most this many source rows in all (in sorted shard order)")
    p.add_argument("--system", help='system message of every record ("" for none; default: "You are a helpful '
                                    'assistant", none for hf_arrow)')
    p.add_argument("--image-format", choices=list(IMAGE_FORMATS), default="jpeg",
                   help="how images are stored (jpeg: quality 95, as the release)")
    p.add_argument("--image-root", help="where relative image and video paths are found (default: --src)")
    p.add_argument(cli.DEBUG_FLAG, action="store_true", help=cli.DEBUG_HELP)
    a = p.parse_args(argv)
    if a.limit is not None and a.limit < 1:
        p.error(f"--limit {a.limit}: expected at least 1 source row (leave it out to convert everything)")
    if a.workers < 0:
        p.error(f"--workers {a.workers}: expected 0 or more processes")
    stats = convert(a.source, a.src, a.out, subsets=a.subsets, workers=a.workers, limit=a.limit, system=a.system,
                    image_format=a.image_format, image_root=a.image_root)
    print(_summary(stats, a.out))
    out = os.path.abspath(a.out)
    print(f"train on it: python -m bard_jax.train --recipe recipes/pbm_b4.py --recipe.data.train_jsonl={out} "
          f"--recipe.data.image_root={out} (the tokenizer comes from model.init_from; else add "
          "--recipe.data.processor=DIR)")
    if stats["failed_shards"]:
        for failed in stats["failed_shards"]:
            print(f"{PROG}: failed shard {failed['path']}: {failed['error']}", file=sys.stderr)
        print(f"{PROG}: {len(stats['failed_shards'])} shards failed; run the same command again to retry them",
              file=sys.stderr)
        return EXIT_FAILED_SHARDS
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main, prog=PROG))
