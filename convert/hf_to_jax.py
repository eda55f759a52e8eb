"""Convert a Hugging Face Qwen3-VL / BARD-VL directory into bard_jax's format (orbax params + configs + tokenizer).

Usage:  python convert/hf_to_jax.py SRC_HF_DIR DST_DIR [--dtype keep|float32|bfloat16|float16] [--overwrite] [--debug]

Streams tensor by tensor (never holds the whole model). DST is written under a temporary name next to it and
renamed at the end: a failed or interrupted run leaves no complete-looking DST (the next run removes what a
killed one left behind). DST must be missing or empty; an earlier output of this command is replaced only with
--overwrite; any other non-empty directory, and a DST that is, contains or lies inside SRC, is refused and left
untouched. Exit status 1 with one message naming every problem (missing / unexpected / mis-shaped tensors, bad
config.json, truncated files, a training workdir passed as SRC).
"""

import argparse
import sys
import time

from bard_jax import cli, hf

PROG = "python convert/hf_to_jax.py"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="HF checkpoint directory (config.json + safetensors)")
    p.add_argument("dst", help="output directory (missing, empty, or an earlier output with --overwrite)")
    p.add_argument("--dtype", default="keep", choices=["keep", "float32", "bfloat16", "float16"],
                   help="parameter dtype in DST (default: keep each tensor's stored dtype)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it holds an earlier output of this command")
    p.add_argument(cli.DEBUG_FLAG, action="store_true", help=cli.DEBUG_HELP)
    args = p.parse_args(argv)
    t0 = time.time()
    hf.convert_hf(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite)
    print(f"converted {args.src} -> {args.dst} in {time.time() - t0:.1f}s")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=PROG))
