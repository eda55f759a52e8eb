"""Convert a Hugging Face Qwen3-VL / BARD-VL directory into bard_jax's format (orbax params + configs + tokenizer).

Usage:  python convert/hf_to_jax.py SRC_HF_DIR DST_DIR [--dtype keep|float32|bfloat16|float16]

Streams tensor by tensor (never holds the whole model). DST is written under a temporary name next to it and
renamed at the end: a failed or interrupted run leaves no complete-looking DST. Exit status 1 with one message
naming every problem (missing / unexpected / mis-shaped tensors, bad config.json, truncated files).
"""

import argparse
import sys
import time

from bard_jax import hf


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="HF checkpoint directory (config.json + safetensors)")
    p.add_argument("dst", help="output directory")
    p.add_argument("--dtype", default="keep", choices=["keep", "float32", "bfloat16", "float16"],
                   help="parameter dtype in DST (default: keep each tensor's stored dtype)")
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        hf.convert_hf(args.src, args.dst, dtype=args.dtype)
    except (ValueError, OSError) as e:  # CheckpointError and ConfigError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"converted {args.src} -> {args.dst} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
