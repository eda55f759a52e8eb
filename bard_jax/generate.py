"""`python -m bard_jax.generate --model DIR --prompt TEXT [--image PATH ...]`: block-diffusion decoding.

Loads the weights with `bj.load_pretrained(DIR)` and the tokenizer / image settings with `Processor.from_pretrained
(DIR)`, renders the chat template with a generation prompt, decodes, prints the answer and the statistics.
The mask id is the tokenizer's `<|mask|>` if it has one, else 151671; EOS is `<|im_end|>`.
A bad flag, an unreadable image, a missing model directory or a prompt the model cannot take is one line on stderr
and exit status 1 (`--debug` or BARD_JAX_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np
from PIL import Image

import bard_jax as bj
from bard_jax import cli, hf
from bard_jax.data import DataError, Processor
from bard_jax.errors import InputError

PROG = "python -m bard_jax.generate"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF or bard_jax directory with the tokenizer files")
    p.add_argument("--prompt", required=True)
    p.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--block-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=4, help="denoising steps per block (at most)")
    p.add_argument("--strategy", default="low_confidence_dynamic",
                   choices=["low_confidence_dynamic", "low_confidence_static"])
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--commit", default="fold", choices=["fold", "forward", "reuse"],
                   help="how a finished block's K/V enter the cache: fold (default: inside the next block's first "
                   "forward), forward (a forward of its own, the reference's schedule: same tokens), reuse (the last "
                   "denoising forward's: fewer forwards, other tokens)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument(cli.DEBUG_FLAG, action="store_true", help=cli.DEBUG_HELP)
    return p.parse_args(argv)


def read_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise DataError(f"--image {path} cannot be read ({reason})") from e


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not args.prompt.strip():
        raise InputError("--prompt is empty: give the question or instruction to answer")
    # The cheap checks first: a bad flag or image fails before the tokenizer and the weights load. The token ids
    # come from the tokenizer; until then the settings carry the defaults.
    settings = bj.SamplingConfig(
        max_new_tokens=args.max_new_tokens, block_size=args.block_size, denoising_steps=args.steps,
        strategy=args.strategy, confidence_threshold=args.threshold, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, commit=args.commit,
    )
    images = [read_image(path) for path in args.image]
    hf.check_weights_dir(args.model)  # a training workdir or a wrong path is named before the tokenizer is read
    proc = Processor.from_pretrained(args.model)
    cfg = dataclasses.replace(settings, mask_token_id=proc.mask_id(), eos_token_id=proc.im_end_id)
    content = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": args.prompt}]
    enc = proc.encode_chat([{"role": "user", "content": content}], add_generation_prompt=True)
    model = bj.load_pretrained(args.model, dtype=args.dtype)
    import jax

    out = bj.generate(model, enc["input_ids"], cfg, pixel_values=enc.get("pixel_values"),
                      image_grid_thw=enc.get("image_grid_thw"), rng=jax.random.key(args.seed))
    row = np.asarray(out.tokens[0])
    eos = np.nonzero(row == cfg.eos_token_id)[0]
    row = row[: eos[0]] if len(eos) else row
    print(proc.tokenizer.decode([t for t in row.tolist() if t != cfg.mask_token_id], skip_special_tokens=True))
    s = out.stats
    print(f"[nfe {int(s['nfe'][0])}, denoising forwards {int(s['denoising_forwards'][0])}, tokens "
          f"{int(s['generated_tokens'][0])}, tokens/forward {float(s['tokens_per_forward'][0]):.2f}, "
          f"prefill {s['prefill_seconds']:.2f}s, decode {s['decode_seconds']:.2f}s, "
          f"block steps {s['block_step_counts'][0].tolist()}]", file=sys.stderr)
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=PROG))
