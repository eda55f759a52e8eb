"""Our compiled sampler against the reference PyTorch `generate()`, on identical weights, on this machine's CPU.

The reference (github.com/fudan-generative-vision/Bard-VL) pins transformers 4.57, so its half runs in its own
virtualenv. The two halves share a work directory:

  # 1. a virtualenv with torch and transformers==4.57.3, and a checkout of the reference:
  python benchmarks/bench_reference_sampler.py reference --repo PATH/TO/Bard-VL --workdir W
  # 2. our virtualenv:
  python benchmarks/bench_reference_sampler.py ours --workdir W

Half 1 builds a random BARD-VL model with the reference's own class (seeded), saves it to W/checkpoint with
`save_pretrained`, decodes random text prompts with its `generate()` (one prompt per call: the only batch size it
supports) and writes the tokens and wall times to W/reference.json. Half 2 loads W/checkpoint with
`bj.load_pretrained`, decodes the same prompts with `bj.generate` one at a time and all in one batch, for each of
`--commits` (default: "fold", our default, and "forward", the reference's schedule), checks that its tokens equal
the reference's, and prints the table. Both run in float32; timings are the best of `--repeats`
calls after a warm-up call (ours: after compilation). Tokens per second count the tokens up to and including the
first EOS (random weights rarely produce it, so most rows decode all `--new` tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# (block size, denoising steps per block, strategy, threshold). With random weights few tokens clear the threshold,
# so the dynamic rows commit about their per-step minimum (block / steps tokens per forward), like the static rows.
SETTINGS = [(4, 4, "low_confidence_static", 0.9), (4, 4, "low_confidence_dynamic", 0.9),
            (4, 1, "low_confidence_static", 0.9), (32, 8, "low_confidence_static", 0.9),
            (32, 32, "low_confidence_dynamic", 0.9)]


def model_shape(args) -> dict:
    """The model both halves decode with: text width `--width`, `--layers` layers, head dim 64, GQA 2:1."""
    heads = args.width // 64
    vocab = args.vocab
    return {
        "text_config": {"vocab_size": vocab, "hidden_size": args.width, "intermediate_size": 3 * args.width,
                        "num_hidden_layers": args.layers, "num_attention_heads": heads,
                        "num_key_value_heads": heads // 2, "head_dim": 64, "rope_theta": 5000000.0,
                        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
                        "rope_scaling": {"rope_type": "default", "mrope_section": [12, 10, 10],
                                         "mrope_interleaved": True}},
        "vision_config": {"depth": 1, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
                          "out_hidden_size": args.width, "num_position_embeddings": 64,
                          "deepstack_visual_indexes": []},
        "image_token_id": vocab - 5, "video_token_id": vocab - 4, "vision_start_token_id": vocab - 3,
        "vision_end_token_id": vocab - 2, "tie_word_embeddings": bool(args.tied),
    }


def special_ids(vocab: int) -> tuple[int, int]:
    """(mask id, eos id): ids no prompt contains."""
    return vocab - 6, vocab - 1


def prompts(args) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(0, args.vocab - 10, (args.prompts, args.prompt_len)).tolist()


def produced(tokens: list[int], eos: int) -> int:
    """Tokens up to and including the first EOS."""
    return tokens.index(eos) + 1 if eos in tokens else len(tokens)


def best_of(fn, repeats: int):
    """(last output, best wall time) of `repeats` timed calls after a warm-up call. bench_sampler.timed does the
    same, but importing it would import jax, which the reference half's virtualenv does not have."""
    out = fn()  # warm-up (our compile; the reference's first-call allocations)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def run_reference(args) -> None:
    """Half 1, in the reference's environment."""
    import types

    import torch
    from transformers import BatchFeature

    # The reference's package __init__ needs files its repository does not ship; import the model package only.
    pkg = types.ModuleType("nemo_automodel")
    pkg.__path__ = [os.path.join(os.path.abspath(args.repo), "nemo_automodel")]
    sys.modules["nemo_automodel"] = pkg
    from nemo_automodel.components.models.bard_vl import BardVLConfig, BardVLForConditionalGeneration

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    config = BardVLConfig(**model_shape(args))
    model = BardVLForConditionalGeneration(config).eval().to(torch.float32)
    with torch.no_grad():  # larger than the default init, so the random model's top-1 margins are not ties
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0 / p.shape[-1] ** 0.5)
        if args.tied:  # the loop above drew the head apart from the table; a tied model reads logits off the table
            model.lm_head.weight.copy_(model.model.language_model.embed_tokens.weight)
    ckpt = os.path.join(args.workdir, "checkpoint")
    model.save_pretrained(ckpt)
    mask_id, eos = special_ids(args.vocab)
    rows = []
    for block, steps, strategy, threshold in SETTINGS:
        per_prompt = []
        for ids in prompts(args):
            inputs = BatchFeature({"input_ids": torch.tensor([ids], dtype=torch.long)})

            def call(inputs=inputs, block=block, steps=steps, strategy=strategy, threshold=threshold):
                with torch.no_grad():
                    return model.generate(inputs, max_new_tokens=args.new, block_size=block, denoising_steps=steps,
                                          remasking_strategy=strategy, confidence_threshold=threshold,
                                          mask_token_id=mask_id, eos_token_id=eos)

            out, seconds = best_of(call, args.repeats)
            tokens = [int(t) for t in out[0, : args.new]]
            per_prompt.append({"tokens": tokens, "seconds": seconds})
        made = sum(produced(p["tokens"], eos) for p in per_prompt)
        secs = sum(p["seconds"] for p in per_prompt)
        rows.append({"block_size": block, "denoising_steps": steps, "strategy": strategy, "threshold": threshold,
                     "prompts": per_prompt, "tokens_per_second": made / secs})
        print(f"reference b={block} steps={steps} {strategy}: {made / secs:.1f} tokens/s", flush=True)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "settings": rows,
           "shape": model_shape(args), "args": vars(args)}
    with open(os.path.join(args.workdir, "reference.json"), "w") as f:
        json.dump(out, f)


def run_ours(args) -> None:
    """Half 2, in our environment."""
    import jax
    import numpy as np

    import bard_jax as bj

    with open(os.path.join(args.workdir, "reference.json")) as f:
        ref = json.load(f)
    for key in ("width", "layers", "vocab", "new", "prompts", "prompt_len", "tied"):
        if ref["args"][key] != getattr(args, key):
            raise SystemExit(f"--{key.replace('_', '-')} {getattr(args, key)} differs from the reference half's "
                             f"{ref['args'][key]}: pass the same flags to both halves")
    model = bj.load_pretrained(os.path.join(args.workdir, "checkpoint"), dtype="float32")
    mask_id, eos = special_ids(args.vocab)
    ids_all = np.asarray(prompts(args), np.int32)
    print(f"model: width {args.width}, {args.layers} layers, vocab {args.vocab}; {args.prompts} prompts of "
          f"{args.prompt_len} tokens, {args.new} new tokens; reference torch {ref['torch']} "
          f"({ref['threads']} threads), ours jax {jax.__version__} on {jax.devices()[0].platform}")
    print(f"| block | steps | strategy | commit | reference tokens/s | ours, 1 prompt per call | vs reference | "
          f"forwards per prompt, reference / ours | ms per forward, reference / ours | ours, {args.prompts} prompts "
          "in one batch | vs reference | tokens equal to the reference |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for row in ref["settings"]:
        for commit in args.commits.split(","):
            results.append(compare(model, ids_all, row, commit, args))
    with open(os.path.join(args.workdir, "ours.json"), "w") as f:
        json.dump(results, f, indent=1)


def compare(model, ids_all, row: dict, commit: str, args) -> dict:
    """One reference setting decoded by ours with `commit`: one prompt per call, then all in one batch; prints the
    table row and returns its figures."""
    import jax
    import numpy as np

    import bard_jax as bj

    mask_id, eos = special_ids(args.vocab)
    sc = bj.SamplingConfig(max_new_tokens=args.new, block_size=row["block_size"],
                           denoising_steps=row["denoising_steps"], strategy=row["strategy"],
                           confidence_threshold=row["threshold"], mask_token_id=mask_id, eos_token_id=eos,
                           commit=commit)
    single_tokens, single_secs, forwards, ref_forwards = [], 0.0, 0, 0
    for i in range(args.prompts):
        out, secs = best_of(lambda i=i: jax.block_until_ready(bj.generate(model, ids_all[i:i + 1], sc)),
                            args.repeats)
        tokens = np.asarray(out.tokens)[0]
        single_tokens.append(tokens.tolist())
        single_secs += secs
        forwards += int(out.stats["nfe"][0])
        # The reference's forwards when the tokens are equal: its prefill, the same denoising forwards, and a
        # commit forward after every block without EOS.
        blocks = int((out.stats["block_step_counts"][0] > 0).sum())
        ref_forwards += 1 + int(out.stats["denoising_forwards"][0]) + blocks - int((tokens == eos).any())
    batch_out, batch_secs = best_of(lambda: jax.block_until_ready(bj.generate(model, ids_all, sc).tokens),
                                    args.repeats)
    batch_tokens = np.asarray(batch_out).tolist()
    ref_tokens = [p["tokens"] for p in row["prompts"]]
    equal = sum(a == b for a, b in zip(single_tokens, ref_tokens))
    equal_batch = sum(a == b for a, b in zip(batch_tokens, ref_tokens))
    tps1 = sum(produced(t, eos) for t in single_tokens) / single_secs
    tpsb = sum(produced(t, eos) for t in batch_tokens) / batch_secs
    rtps = row["tokens_per_second"]
    ref_secs = sum(p["seconds"] for p in row["prompts"])
    result = {**{k: row[k] for k in ("block_size", "denoising_steps", "strategy")}, "commit": commit,
              "reference_tokens_per_second": rtps, "ours_single_tokens_per_second": tps1,
              "ours_batch_tokens_per_second": tpsb, "equal_single": equal, "equal_batch": equal_batch,
              "forwards": forwards, "reference_forwards": ref_forwards,
              "reference_ms_per_forward": ref_secs / ref_forwards * 1e3,
              "ours_ms_per_forward": single_secs / forwards * 1e3}
    print(f"| {row['block_size']} | {row['denoising_steps']} | {row['strategy'][15:]} | {commit} | {rtps:.1f} | "
          f"{tps1:.1f} | {tps1 / rtps:.2f}x | {ref_forwards / args.prompts:.0f} / {forwards / args.prompts:.0f} | "
          f"{result['reference_ms_per_forward']:.1f} / {result['ours_ms_per_forward']:.1f} | {tpsb:.1f} | "
          f"{tpsb / rtps:.2f}x | {equal}/{args.prompts} alone, {equal_batch}/{args.prompts} batched |", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("half", choices=("reference", "ours"))
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--repo", help="a checkout of the reference repository (the reference half)")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--commits", default="fold,forward", help="our commit modes to compare (ours half)")
    ap.add_argument("--untied", dest="tied", action="store_false", help="a separate output head (default: tied to "
                    "the embedding table)")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    if args.half == "reference":
        if not args.repo or not os.path.isdir(os.path.join(args.repo, "nemo_automodel")):
            raise SystemExit("--repo must point at a checkout of fudan-generative-vision/Bard-VL")
        run_reference(args)
    else:
        run_ours(args)


if __name__ == "__main__":
    main()
