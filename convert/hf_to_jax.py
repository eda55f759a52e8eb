"""Convert a Hugging Face Qwen3-VL / BARD-VL directory into bard_jax's format (orbax params + config + tokenizer).

Usage:  python convert/hf_to_jax.py SRC_HF_DIR DST_DIR [--dtype float32|bfloat16|keep]
DST is written under a temporary name and renamed at the end: an interrupted run leaves no complete-looking DST.
"""

import argparse
import sys
import time

from bard_jax import hf


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="HF checkpoint directory (config.json + safetensors)")
    p.add_argument("dst", help="output directory")
    p.add_argument("--dtype", default="keep", help="float32, bfloat16, or keep (the stored dtype; default)")
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        config, raw = hf.read_hf_config(args.src)
        params = hf.load_hf_params(args.src, config, dtype=None if args.dtype == "keep" else args.dtype)
        hf.save_converted(params, config, raw, args.dst, side_files_from=args.src)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"converted {args.src} -> {args.dst} ({config.model_type}, {time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
