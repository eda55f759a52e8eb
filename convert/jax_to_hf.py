"""Export a bard_jax directory (from convert/hf_to_jax.py or training) to a Hugging Face directory.

Usage:  python convert/jax_to_hf.py SRC_DIR DST_HF_DIR [--max-shard-size 5GB]

The original model_type (qwen3_vl or bard_vl) and config.json dialect are kept, tied heads are not duplicated, the
stored dtype is kept, and above the shard size the weights are split into model-0000k-of-0000n.safetensors files
with model.safetensors.index.json (as transformers' save_pretrained does). DST is written under a temporary name
and renamed at the end.
"""

import argparse
import sys
import time

from bard_jax import hf


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="bard_jax directory (contains bard_jax_config.json)")
    p.add_argument("dst", help="output HF directory")
    p.add_argument("--max-shard-size", default="5GB", help="e.g. 5GB, 500MB, 2GiB (default 5GB)")
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        if not hf.is_converted_dir(args.src):
            raise hf.CheckpointError(f"{args.src}: not a bard_jax directory (no {hf.CONVERTED_MARKER})")
        params, config, raw = hf.load_converted(args.src, dtype=None)
        hf.export_hf(params, config, raw, args.dst, max_shard_bytes=args.max_shard_size, side_files_from=args.src)
    except (ValueError, OSError) as e:  # CheckpointError and ConfigError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"exported {args.src} -> {args.dst} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
