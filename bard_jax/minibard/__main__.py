"""`python -m bard_jax.minibard [--workdir DIR] [--results DIR] [--seed S] [--smoke]`: the BARD method in miniature.

1. generates the synthetic task (train and held-out eval scenes) into WORKDIR/data;
2. trains the AR source model from random weights (`recipes/minibard/ar.py`), PBM 4 -> 8 -> 16 -> 32 from it, and
   SWD students B8/B16/B32 from the same-block PBM stages with PBM B4 as the teacher, each with the public
   training command (a finished stage is skipped, an interrupted one resumes);
3. evaluates the AR model (KV-cached greedy decoding) and every diffusion model under static decoding at several
   step counts, dynamic decoding across thresholds, and commit reuse, on the held-out questions, through the
   benchmark runner (`bard_jax.eval`, task `synthetic`; per-setting samples in WORKDIR/eval);
4. writes RESULTS/minibard.json, RESULTS/minibard.md and PNG plots.

`--smoke` runs every part with a few steps and a tiny eval (the test suite runs it); its results go to
WORKDIR/results unless --results is given. `--seed S` replicates the chain with another training seed (the AR
source's init, the data order and the diffusion noise of every stage) on the same task and held-out questions; a
workdir holds one seed's chain, since finished stages are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time

MAX_NEW_TOKENS = 64  # the longest answer (4 objects in the list question) is 55 tokens with its EOS
REFERENCE = {"strategy": "low_confidence_dynamic", "threshold": 0.9, "commit": "forward"}
SMOKE_TRAIN = ("--recipe.steps=2", "--recipe.log_every=1", "--recipe.data.synthetic_n=48",
               "--recipe.data.synthetic_eval_n=16", "--recipe.data.global_batch_size=4",
               "--recipe.data.micro_batch_size=4", "--recipe.data.length_buckets=256",
               "--recipe.data.response_buckets=64", "--recipe.ckpt_every=100")  # one batch shape: one compile


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bard_jax.minibard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=os.path.join("runs", "minibard"))
    p.add_argument("--results", default=None, help="output directory (default: results/, or WORKDIR/results "
                                                    "with --smoke)")
    p.add_argument("--smoke", action="store_true", help="a few steps per stage and a tiny eval, compiled with "
                   "most XLA optimizations off (about 2.5 minutes on 2 cores)")
    p.add_argument("--eval-n", type=int, default=0, help="held-out questions to evaluate (0: all)")
    p.add_argument("--batch", type=int, default=32, help="questions decoded together")
    p.add_argument("--seed", type=int, default=0, help="training seed of every stage (init, data order, noise); "
                   "the task and its held-out questions stay the same")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    return p.parse_args(argv)


def seed_overrides(seed: int) -> tuple[str, ...]:
    """The recipe overrides that move every random choice of training to `seed` (none for the default 0, so the
    printed stage commands stay the recipes' own)."""
    if seed == 0:
        return ()
    return (f"--recipe.seed={seed}", f"--recipe.data.seed={seed}", f"--recipe.objective.seed={seed}")


def claim_workdir(workdir: str, seed: int) -> None:
    """Record the chain's seed in WORKDIR/seed.json, or refuse a workdir that holds another seed's stages: they
    would be skipped as finished and the run would silently mix seeds."""
    path = os.path.join(workdir, "seed.json")
    recorded = os.path.exists(path)
    if recorded:
        with open(path) as f:
            held = json.load(f).get("seed")
    else:  # stages trained before the runner recorded seeds were trained with the default
        held = 0 if os.path.isdir(os.path.join(workdir, "ar")) else None
    if held is not None and held != seed:
        raise SystemExit(f"{workdir} holds the chain of --seed {held}; give --seed {seed} its own --workdir")
    if not recorded:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump({"seed": seed}, f)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import jax

    import bard_jax as bj
    from bard_jax.minibard import evaluate, report, stages

    if args.smoke and "JAX_DISABLE_MOST_OPTIMIZATIONS" not in os.environ:
        # A smoke run is a dozen compilations of a few steps each: XLA's optimization passes cost more than they
        # save (about 2.5 minutes instead of 3 on 2 cores). Its timings mean nothing anyway.
        jax.config.update("jax_disable_most_optimizations", True)

    workdir = os.path.abspath(args.workdir)
    results_dir = args.results or (os.path.join(workdir, "results") if args.smoke else "results")
    os.makedirs(results_dir, exist_ok=True)
    claim_workdir(workdir, args.seed)
    overrides = (SMOKE_TRAIN if args.smoke else ()) + seed_overrides(args.seed)
    eval_n = args.eval_n or (12 if args.smoke else 0)
    batch = 4 if args.smoke else args.batch

    t_start = time.time()
    train_seconds = {}
    for stage in stages.chain():
        train_seconds[stage.name] = stages.run_stage(stage, workdir, overrides)

    # Every evaluation is redone (a stage may have been retrained since): the runner would resume an old one.
    eval_dir = os.path.join(workdir, "eval")
    shutil.rmtree(eval_dir, ignore_errors=True)
    ev = evaluate.load_eval_set(os.path.join(workdir, "data"), eval_dir, eval_n)
    print(f"[minibard] evaluating on {ev.size} held-out questions", flush=True)

    def export(name):
        return os.path.join(workdir, name, "export")

    ar_model = bj.load_pretrained(export("ar"))
    ar = evaluate.metrics(evaluate.decode_all(ar_model, ev, evaluate.ar_settings(export("ar"), MAX_NEW_TOKENS),
                                              "ar", batch))
    ar.update(name="ar", block_size=1, strategy="autoregressive")
    print(f"[minibard] ar: exact {ar['exact_match']:.3f} tokens/s {ar['tokens_per_second']:.0f}", flush=True)
    models = []
    for stage in stages.chain()[1:]:
        model = bj.load_pretrained(export(stage.name))
        for k, s in enumerate(evaluate.sampling_settings(stage.block_size, args.smoke)):
            cfg = bj.SamplingConfig(
                max_new_tokens=MAX_NEW_TOKENS, block_size=stage.block_size, denoising_steps=s["denoising_steps"],
                strategy=s["strategy"], confidence_threshold=s["threshold"] or 0.9, commit=s["commit"],
                mask_token_id=ev.mask_token_id, eos_token_id=ev.eos_token_id)
            settings = evaluate.diffusion_settings(export(stage.name), cfg)
            m = evaluate.metrics(evaluate.decode_all(model, ev, settings, f"{stage.name}-{k}", batch))
            m.update(name=stage.name, block_size=stage.block_size, swd=stage.kind == "swd", **s)
            models.append(m)
            print(f"[minibard] {stage.name} {s['strategy'][15:]} steps={s['denoising_steps']} "
                  f"thr={s['threshold']} {s['commit']}: exact {m['exact_match']:.3f} "
                  f"tpf {m['tokens_per_forward']:.2f} tokens/s {m['tokens_per_second']:.0f}", flush=True)

    results = {
        "ar": ar,
        "models": models,
        "eval_questions": ev.size,
        "seed": args.seed,
        "smoke": args.smoke,
        "train_seconds": train_seconds,
        "total_seconds": time.time() - t_start,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "jax_backend": jax.default_backend()},
    }
    results["headline"] = report.headline(results, REFERENCE)
    with open(os.path.join(results_dir, "minibard.json"), "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    with open(os.path.join(results_dir, "minibard.md"), "w") as f:
        f.write(report.markdown(results))
    names = [s.name for s in stages.chain()]
    written = report.plots(results, report.read_losses(workdir, names), results_dir)
    print(f"[minibard] wrote {results_dir}/minibard.json, minibard.md {' '.join(written)} "
          f"in {results['total_seconds']:.0f} s", flush=True)
    print(json.dumps(results["headline"], indent=1))
    return 0


if __name__ == "__main__":
    from bard_jax import cli

    raise SystemExit(cli.run(main, prog="python -m bard_jax.minibard"))
