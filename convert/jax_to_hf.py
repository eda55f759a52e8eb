"""Export a bard_jax directory (from convert/hf_to_jax.py or training) to a Hugging Face directory.

Usage:  python convert/jax_to_hf.py SRC_DIR DST_HF_DIR [--max-shard-size 5GB] [--overwrite] [--debug]

SRC is a bard_jax directory: a training run's is WORKDIR/export, not the workdir itself. The original model_type
(qwen3_vl or bard_vl) and config.json dialect are kept, tied heads are not duplicated, the stored dtype is kept,
and above the shard size the weights are split into model-0000k-of-0000n.safetensors files with
model.safetensors.index.json (as transformers' save_pretrained does). DST is written under a temporary name and
renamed at the end. DST must be missing or empty; an earlier output of this command is replaced only with
--overwrite; any other non-empty directory, and a DST that is, contains or lies inside SRC, is refused and left
untouched.
"""

import argparse
import sys
import time

from bard_jax import cli, hf

PROG = "python convert/jax_to_hf.py"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="bard_jax directory (contains bard_jax_config.json)")
    p.add_argument("dst", help="output HF directory (missing, empty, or an earlier output with --overwrite)")
    p.add_argument("--max-shard-size", default="5GB", help="e.g. 5GB, 500MB, 2GiB (default 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it holds an earlier output of this command")
    p.add_argument(cli.DEBUG_FLAG, action="store_true", help=cli.DEBUG_HELP)
    args = p.parse_args(argv)
    t0 = time.time()
    hf.check_weights_dir(args.src)
    if not hf.is_converted_dir(args.src):
        raise hf.CheckpointError(f"{args.src}: not a bard_jax directory (no {hf.CONVERTED_MARKER}; convert an HF "
                                 "directory with convert/hf_to_jax.py)")
    hf.parse_size(args.max_shard_size)  # a bad size fails before the weights are read
    hf.check_output_dir(args.src, args.dst, overwrite=args.overwrite, kind="hf")
    params, config, raw = hf.load_converted(args.src, dtype=None)
    hf.export_hf(params, config, raw, args.dst, max_shard_bytes=args.max_shard_size, side_files_from=args.src)
    print(f"exported {args.src} -> {args.dst} in {time.time() - t0:.1f}s")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=PROG))
