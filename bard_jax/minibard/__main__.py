"""`python -m bard_jax.minibard [--workdir DIR] [--results DIR] [--task T] [--seed S] [--ablations [NAMES]]
[--smoke]`: the BARD method in miniature.

Without --ablations (the main chain):
1. generates the synthetic task (train and held-out eval scenes; `--task`, default `attributes`) into WORKDIR/data;
2. trains the AR source model from random weights (`recipes/minibard/ar.py`), PBM 4 -> 8 -> 16 -> 32 from it, and
   SWD students B8/B16/B32 from the same-block PBM stages with PBM B4 as the teacher, each with the public
   training command (a finished stage is skipped, an interrupted one resumes);
3. evaluates the AR model (KV-cached greedy decoding) and every diffusion model across decoding settings on the
   held-out questions, short and long answers as separate sets, through the benchmark runner (`bard_jax.eval`,
   task `synthetic`; per-setting samples in WORKDIR/eval);
4. writes RESULTS/minibard.json, RESULTS/minibard.md and PNG plots.

With --ablations: trains the paper's ablations in miniature (`stages.ablations()`: AR -> B32 directly, SWD B32 with
the AR teacher, PBM B4 with the mixed-noise prior, PBM B4 with label shift), reusing the main chain's stages
(training those still missing), decodes each ablation and the main stage it is compared with, and writes
RESULTS/minibard_ablations.json and .md with paired sign tests. `--ablations A,B` runs only the named ones (each
ablation stands alone; a later run of all of them reuses what is trained).

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

MAX_NEW_TOKENS = 64  # the longest answer (5 objects in a list question) is 51 tokens with its EOS
REFERENCE = {"strategy": "low_confidence_dynamic", "threshold": 0.9, "commit": "fold"}
SMOKE_TRAIN = ("--recipe.steps=2", "--recipe.log_every=1", "--recipe.data.synthetic_n=48",
               "--recipe.data.synthetic_eval_n=16", "--recipe.data.global_batch_size=4",
               "--recipe.data.micro_batch_size=4", "--recipe.data.length_buckets=256",
               "--recipe.data.response_buckets=64", "--recipe.ckpt_every=100")  # one batch shape: one compile
SEED_STRIDE = 100  # --seed S moves stage k's data seed from k to k + 100 S


def parse_args(argv):
    from bard_jax.data.synthetic import TASKS

    p = argparse.ArgumentParser(prog="python -m bard_jax.minibard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=os.path.join("runs", "minibard"))
    p.add_argument("--results", default=None, help="output directory (default: results/, or WORKDIR/results "
                                                    "with --smoke)")
    p.add_argument("--task", default="attributes", choices=sorted(TASKS),
                   help="the synthetic task (default: attributes; digits is the first Mini-BARD's)")
    p.add_argument("--ablations", nargs="?", const="all", default=None, metavar="NAMES",
                   help="train and evaluate the ablations (after the main chain, whose stages they reuse) instead of "
                   "evaluating the main chain; optionally only the comma-separated NAMES (default: all of "
                   "direct_b32, swd_b32_ar_teacher, pbm_b4_mix, pbm_b4_shift)")
    p.add_argument("--smoke", action="store_true", help="a few steps per stage and a tiny eval, compiled with "
                   "most XLA optimizations off and, where jaxlib has them, the CPU emitters that compile fastest")
    p.add_argument("--eval-n", type=int, default=0, help="held-out questions to evaluate (0: all)")
    p.add_argument("--batch", type=int, default=32, help="questions decoded together")
    p.add_argument("--seed", type=int, default=0, help="training seed of every stage (init, data order, noise); "
                   "the task and its held-out questions stay the same")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    args = p.parse_args(argv)
    # Checked before any stage trains (an evaluation that cannot run would otherwise fail after an hour of it).
    if args.eval_n < 0:
        p.error(f"--eval-n {args.eval_n}: expected a number of held-out questions, or 0 for all of them")
    if args.batch < 1:
        p.error(f"--batch {args.batch}: expected at least 1 question per decode call")
    if args.seed < 0:
        p.error(f"--seed {args.seed}: expected a non-negative integer")
    if args.ablations is not None:
        from bard_jax.minibard.stages import ablations

        known = [s.name for s in ablations()]
        names = known if args.ablations == "all" else [n for n in args.ablations.split(",") if n]
        unknown = sorted(set(names) - set(known))
        if unknown or not names:
            p.error(f"--ablations: unknown ablation(s) {unknown or names}; known: {', '.join(known)}")
        args.ablations = names  # the chosen names (None without --ablations)
    return args


def chosen_ablations(args) -> list:
    """The ablation stages `--ablations` names, in their standard order ([] without --ablations)."""
    from bard_jax.minibard import stages

    return [s for s in stages.ablations() if s.name in (args.ablations or ())]


def seed_overrides(seed: int, stage=None) -> tuple[str, ...]:
    """The recipe overrides that move every random choice of training to `seed` (none for the default 0, so the
    printed stage commands stay the recipes' own). Each stage keeps its own data seed, moved by SEED_STRIDE * seed."""
    if seed == 0:
        return ()
    data_seed = (stage.data_seed if stage is not None else 0) + SEED_STRIDE * seed
    return (f"--recipe.seed={seed}", f"--recipe.data.seed={data_seed}", f"--recipe.objective.seed={data_seed}")


def claim_workdir(workdir: str, seed: int, task: str = "attributes") -> None:
    """Record the chain's seed and task in WORKDIR/seed.json, or refuse a workdir that holds another seed's or
    task's stages: they would be skipped as finished and the run would silently mix them."""
    path = os.path.join(workdir, "seed.json")
    recorded = os.path.exists(path)
    if recorded:
        with open(path) as f:
            found = json.load(f)
        held, held_task = found.get("seed"), found.get("task", "digits")
    else:  # stages trained before the runner recorded seeds were trained with the default on the digits task
        held = 0 if os.path.isdir(os.path.join(workdir, "ar")) else None
        held_task = "digits" if held is not None else None
    if held is not None and held != seed:
        raise SystemExit(f"{workdir} holds the chain of --seed {held}; give --seed {seed} its own --workdir")
    if held_task is not None and held_task != task:
        raise SystemExit(f"{workdir} holds the chain of --task {held_task}; give --task {task} its own --workdir")
    if not recorded or found.get("task") != task:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump({"seed": seed, "task": task}, f)


def stage_overrides(args, stage) -> tuple[str, ...]:
    return ((SMOKE_TRAIN if args.smoke else ()) + seed_overrides(args.seed, stage)
            + (f"--recipe.data.synthetic_task={args.task}",))


def sampling_config(stage, setting: dict, ev):
    import bard_jax as bj

    return bj.SamplingConfig(
        max_new_tokens=MAX_NEW_TOKENS, block_size=stage.block_size, denoising_steps=setting["denoising_steps"],
        strategy=setting["strategy"], confidence_threshold=setting["threshold"] or 0.9, commit=setting["commit"],
        mask_token_id=ev.mask_token_id, eos_token_id=ev.eos_token_id, shift_labels=stage.shift_labels)


def is_reference(m: dict) -> bool:
    return all(m.get(k) == v for k, v in REFERENCE.items())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.smoke:  # a dozen programs, each run for a few steps: compile time is the whole cost
        from bard_jax.cpu_compile import use_fast_cpu_compiles

        use_fast_cpu_compiles()
    import jax

    import bard_jax as bj
    from bard_jax.minibard import evaluate, report, stages

    if args.smoke and "JAX_DISABLE_MOST_OPTIMIZATIONS" not in os.environ:
        # A smoke run is a dozen compilations of a few steps each: XLA's optimization passes cost more than they
        # save. Its timings mean nothing anyway.
        jax.config.update("jax_disable_most_optimizations", True)

    workdir = os.path.abspath(args.workdir)
    results_dir = args.results or (os.path.join(workdir, "results") if args.smoke else "results")
    os.makedirs(results_dir, exist_ok=True)
    claim_workdir(workdir, args.seed, args.task)
    eval_n = args.eval_n or (12 if args.smoke else 0)
    # A smoke run's timings mean nothing: each set is one batch, decoded once (no untimed warm-up), so that every
    # setting compiles as few programs as it can.
    batch = eval_n if args.smoke else args.batch
    warmup = not args.smoke

    t_start = time.time()
    train_seconds = {}
    todo = stages.chain() + chosen_ablations(args)
    for stage in todo:
        train_seconds[stage.name] = stages.run_stage(stage, workdir, stage_overrides(args, stage))

    # Every evaluation is redone (a stage may have been retrained since): the runner would resume an old one.
    eval_dir = os.path.join(workdir, "eval_ablations" if args.ablations else "eval")
    shutil.rmtree(eval_dir, ignore_errors=True)
    sets = evaluate.load_eval_sets(os.path.join(workdir, "data"), eval_dir, eval_n)
    ev = sets["short"]
    print(f"[minibard] evaluating on {sets['short'].size} short and {sets['long'].size} long held-out answers",
          flush=True)

    def export(name):
        return os.path.join(workdir, name, "export")

    exact = {}  # (name, setting index) -> {"short", "long", "all"} per-question exact match

    def evaluate_stage(stage, settings_list):
        model = bj.load_pretrained(export(stage.name))
        rows = []
        for k, s in enumerate(settings_list):
            settings = evaluate.diffusion_settings(export(stage.name), sampling_config(stage, s, ev))
            by_length = evaluate.decode_sets(model, sets, settings, f"{stage.name}-{k}", batch, warmup)
            m = evaluate.set_metrics(by_length)
            m.update(name=stage.name, block_size=stage.block_size, swd=stage.kind == "swd", setting=k, **s)
            exact[(stage.name, k)] = evaluate.exact_by_length(by_length)
            rows.append(m)
            print(f"[minibard] {stage.name} {s['strategy'][15:]} steps={s['denoising_steps']} "
                  f"thr={s['threshold']} {s['commit']}: exact {m['exact_match']:.3f} (short "
                  f"{m['short']['exact_match']:.3f}, long {m['long']['exact_match']:.3f}) "
                  f"tpf {m['tokens_per_forward']:.2f} tokens/s {m['tokens_per_second']:.0f}", flush=True)
        return rows

    ar_by_length = evaluate.decode_sets(bj.load_pretrained(export("ar")), sets,
                                        evaluate.ar_settings(export("ar"), MAX_NEW_TOKENS), "ar", batch, warmup)
    ar = evaluate.set_metrics(ar_by_length)
    ar.update(name="ar", block_size=1, strategy="autoregressive")
    exact[("ar", 0)] = evaluate.exact_by_length(ar_by_length)
    print(f"[minibard] ar: exact {ar['exact_match']:.3f} (short {ar['short']['exact_match']:.3f}, long "
          f"{ar['long']['exact_match']:.3f}) tokens/s {ar['tokens_per_second']:.0f}", flush=True)

    models = []
    if args.ablations:
        for ab in chosen_ablations(args):
            for stage in (stages.stage_named(ab.compare_with), ab):
                if not any(m["name"] == stage.name for m in models):
                    models += evaluate_stage(stage, evaluate.ablation_settings(stage.block_size, args.smoke))
    else:
        for stage in stages.chain()[1:]:
            models += evaluate_stage(stage, evaluate.sampling_settings(stage.block_size, args.smoke))

    def reference_key(name):
        return next((name, m["setting"]) for m in models if m["name"] == name and is_reference(m))

    results = {
        "task": args.task,
        "ar": ar,
        "models": models,
        "eval_questions": {k: v.size for k, v in sets.items()},
        "seed": args.seed,
        "smoke": args.smoke,
        "train_seconds": train_seconds,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "jax_backend": jax.default_backend()},
    }
    if args.ablations:
        pairs = [(reference_key(ab.compare_with), reference_key(ab.name)) for ab in chosen_ablations(args)]
        results["paired"] = report.paired_table(exact, pairs)
        results["ablations"] = args.ablations
        name = "minibard_ablations"
    else:
        results["headline"] = report.headline(results, REFERENCE)
        pairs = [(("ar", 0), reference_key("pbm_b4")), (reference_key("pbm_b4"), reference_key("pbm_b32")),
                 (reference_key("pbm_b32"), reference_key("swd_b32")), (("ar", 0), reference_key("swd_b32"))]
        best = results["headline"].get("swd_b32_best_at_3_tokens_per_forward")
        if best:
            pairs.append((("ar", 0), ("swd_b32", best["setting"])))
        results["paired"] = report.paired_table(exact, pairs)
        name = "minibard"
    results["total_seconds"] = time.time() - t_start
    with open(os.path.join(results_dir, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    with open(os.path.join(results_dir, f"{name}.md"), "w") as f:
        f.write(report.ablations_markdown(results) if args.ablations else report.markdown(results))
    written = []
    if not args.ablations:
        names = [s.name for s in stages.chain()]
        written = report.plots(results, report.read_losses(workdir, names), results_dir)
    print(f"[minibard] wrote {results_dir}/{name}.json, {name}.md {' '.join(written)} "
          f"in {results['total_seconds']:.0f} s", flush=True)
    print(json.dumps(results.get("headline", results["paired"]), indent=1))
    return 0


if __name__ == "__main__":
    from bard_jax import cli

    raise SystemExit(cli.run(main, prog="python -m bard_jax.minibard"))
