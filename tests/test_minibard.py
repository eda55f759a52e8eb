"""Mini-BARD: the smoke run goes through every stage, evaluation and report; the headline arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bard_jax.minibard import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_KEYS = {"name", "block_size", "swd", "strategy", "denoising_steps", "threshold", "exact_match",
              "token_accuracy", "tokens_per_forward", "tokens_per_second", "nfe"}


def smoke(workdir, *flags):
    r = subprocess.run([sys.executable, "-m", "bard_jax.minibard", "--smoke", "--workdir", str(workdir), *flags],
                       capture_output=True, text=True, cwd=REPO, env={**os.environ, "XLA_FLAGS": ""})
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def test_smoke_run_trains_every_stage_and_writes_the_results(tmp_path):
    """The main chain in miniature: every stage a few steps, every evaluation part on 12 questions (about 3 minutes
    on 2 cores)."""
    w = tmp_path / "w"
    smoke(w)
    out = w / "results"
    results = json.load(open(out / "minibard.json"))
    assert results["task"] == "attributes"
    for stage in ("ar", "pbm_b4", "pbm_b8", "pbm_b16", "pbm_b32", "swd_b8", "swd_b16", "swd_b32"):
        assert (w / stage / "export").is_dir(), stage
        assert (w / stage / "metrics.jsonl").is_file(), stage
    ar = results["ar"]
    assert 0 <= ar["exact_match"] <= 1 and ar["nfe"] >= 1 and ar["tokens_per_second"] > 0
    assert ar["short"]["questions"] + ar["long"]["questions"] == 12 == ar["questions"]
    models = results["models"]
    assert {m["name"] for m in models} == {"pbm_b4", "pbm_b8", "pbm_b16", "pbm_b32", "swd_b8", "swd_b16", "swd_b32"}
    for m in models:
        assert MODEL_KEYS <= set(m), m
        assert 0 <= m["exact_match"] <= 1 and 0 <= m["field_accuracy"] <= 1 and m["nfe"] >= 1
        assert {"exact_match", "field_accuracy", "tokens_per_second"} <= set(m["long"])
        assert m["swd"] == m["name"].startswith("swd")
    kinds = {(m["strategy"], m["commit"]) for m in models}
    assert kinds == {("low_confidence_static", "fold"), ("low_confidence_dynamic", "fold"),
                     ("low_confidence_dynamic", "reuse")}
    assert "swd_recovered_fraction_long_exact_match" in results["headline"]
    assert {(p["a"], p["b"]) for p in results["paired"]} >= {("ar", "pbm_b4"), ("pbm_b32", "swd_b32")}
    assert "| swd_b32 |" in open(out / "minibard.md").read()
    for png in ("minibard_accuracy_vs_tpf.png", "minibard_losses.png"):
        assert (out / png).stat().st_size > 1000


@pytest.mark.slow  # the main chain's smoke run, then the ablations': about 5 minutes on 2 cores
def test_smoke_ablations_reuse_the_main_stages_and_compare_each_with_its_main_stage(tmp_path):
    w = tmp_path / "w"
    smoke(w)
    r = smoke(w, "--ablations")
    assert r.stdout.count("already trained, skipped") == 8
    out = w / "results"
    ablations = json.load(open(out / "minibard_ablations.json"))
    pairs = {(p["a"], p["b"]) for p in ablations["paired"]}
    assert pairs == {("pbm_b32", "direct_b32"), ("swd_b32", "swd_b32_ar_teacher"), ("pbm_b4", "pbm_b4_mix"),
                     ("pbm_b4", "pbm_b4_shift")}
    for stage in ("direct_b32", "swd_b32_ar_teacher", "pbm_b4_mix", "pbm_b4_shift"):
        assert (w / stage / "export").is_dir(), stage
    shift = json.load(open(w / "pbm_b4_shift" / "export" / "bard_jax_config.json"))
    assert shift["training"]["shift_labels"] is True
    assert "| pbm_b4_shift |" in open(out / "minibard_ablations.md").read()


def _m(name, exact, tpf=1.0, tps=100.0, threshold=0.9, commit="fold", long=None, long_tps=None, setting=0):
    long = exact if long is None else long
    return {"name": name, "exact_match": exact, "tokens_per_forward": tpf, "tokens_per_second": tps,
            "strategy": "low_confidence_dynamic", "denoising_steps": 4, "threshold": threshold, "commit": commit,
            "setting": setting, "long": {"exact_match": long, "field_accuracy": long,
                                         "tokens_per_second": long_tps or tps, "tokens_per_forward": tpf}}


def test_headline_targets_arithmetic():
    ref = {"strategy": "low_confidence_dynamic", "threshold": 0.9, "commit": "fold"}
    results = {"ar": {"exact_match": 0.95, "tokens_per_second": 50.0,
                      "short": {"exact_match": 0.97}, "long": {"exact_match": 0.93, "tokens_per_second": 40.0}},
               "models": [_m("pbm_b4", 0.94, long=0.92), _m("pbm_b32", 0.70, long=0.60),
                          _m("swd_b32", 0.90, tpf=3.5, tps=150.0, long=0.84, long_tps=130.0, setting=1),
                          _m("swd_b32", 0.97, threshold=0.95, tps=120.0, long=0.95, long_tps=70.0, setting=2),
                          _m("pbm_b4", 0.99, commit="reuse", tps=80.0, long=0.91, long_tps=90.0)]}
    h = report.headline(results, ref)
    # PBM loses 32 points on long answers from B4 to B32; SWD B32 gets 24 of them back.
    assert h["swd_recovered_fraction_long_exact_match"] == pytest.approx((0.84 - 0.60) / (0.92 - 0.60))
    assert h["swd_b32_gap_to_ar_points"] == pytest.approx(5.0)
    assert h["ar_exact_match_long"] == 0.93
    # Only the swd_b32 setting at >= 3 tokens per forward counts for the B32 target, however accurate the others.
    assert h["swd_b32_best_at_3_tokens_per_forward"]["exact_match"] == 0.90
    assert h["swd_b32_best_at_3_tokens_per_forward"]["setting"] == 1
    assert h["swd_b32_best_at_3_tokens_per_forward"]["gap_to_ar_points"] == pytest.approx(5.0)
    # Long answers within 2 points of AR's 93%: pbm_b4 (92, 100 tokens/s), the threshold-0.95 swd_b32 (95, 70) and
    # pbm_b4 reuse (91, 90): the fastest is pbm_b4 at 100 / 40. At least AR's 93%: only swd_b32 at 0.95, 70 / 40.
    assert h["fastest_long_within_2_points"]["name"] == "pbm_b4"
    assert h["fastest_long_within_2_points"]["speedup_vs_ar"] == pytest.approx(100 / 40)
    assert h["fastest_long_at_least_ar"]["speedup_vs_ar"] == pytest.approx(70 / 40)
    results["models"] = [m for m in results["models"] if m["tokens_per_forward"] < 3.0]
    assert "swd_b32_best_at_3_tokens_per_forward" not in report.headline(results, ref)


def test_paired_table_counts_discordant_questions_per_subset():
    import numpy as np

    a = {"short": np.array([1, 1, 0, 0], bool), "long": np.array([1, 0, 0], bool)}
    b = {"short": np.array([1, 0, 1, 1], bool), "long": np.array([0, 0, 0], bool)}
    for d in (a, b):
        d["all"] = np.concatenate([d["short"], d["long"]])
    rows = {r["subset"]: r for r in report.paired_table({("x", 0): a, ("y", 3): b}, [(("x", 0), ("y", 3))])}
    assert (rows["short"]["a_only"], rows["short"]["b_only"]) == (1, 2)
    assert rows["short"]["points"] == pytest.approx(25.0) and rows["short"]["p"] == pytest.approx(1.0)
    assert (rows["long"]["a_only"], rows["long"]["b_only"], rows["long"]["b_setting"]) == (1, 0, 3)
    assert rows["all"]["questions"] == 7 and (rows["all"]["a_only"], rows["all"]["b_only"]) == (2, 2)
    assert rows["all"]["points"] == 0.0


def test_chain_order_inputs_and_skipping_finished_stages(tmp_path, capsys):
    from bard_jax.minibard import stages

    chain = stages.chain()
    assert [s.name for s in chain] == ["ar", "pbm_b4", "pbm_b8", "pbm_b16", "pbm_b32", "swd_b8", "swd_b16",
                                       "swd_b32"]
    argv = stages.train_argv(chain[-1], str(tmp_path))
    assert f"--recipe.model.init_from={tmp_path / 'pbm_b32'}" in argv
    assert f"--recipe.objective.teacher_init_from={tmp_path / 'pbm_b4'}" in argv
    assert os.path.isfile(argv[1])
    ablation = {s.name: s for s in stages.ablations()}
    argv = stages.train_argv(ablation["swd_b32_ar_teacher"], str(tmp_path))
    assert f"--recipe.objective.teacher_init_from={tmp_path / 'ar'}" in argv
    assert f"--recipe.model.init_from={tmp_path / 'ar'}" in stages.train_argv(ablation["direct_b32"], str(tmp_path))
    (tmp_path / "ar" / "export").mkdir(parents=True)
    assert stages.run_stage(chain[0], str(tmp_path)) == 0.0  # finished: not trained again
    assert "already trained, skipped" in capsys.readouterr().out


def test_each_stage_has_its_own_data_seed_and_ablations_share_their_main_stages(tmp_path):
    """The recipes hold each stage's data seed (data order and noise), so the diffusion stages do not all start on
    the same examples; an ablation trains with the same seed and steps as the main stage it is compared with, and
    differs from it only in what it ablates. --seed S moves every stage's seed and the AR source's init."""
    from bard_jax.minibard import stages
    from bard_jax.minibard.__main__ import seed_overrides
    from bard_jax.train.recipe import apply_overrides, load_recipe, parse_override_args

    def config(stage, seed=0):
        argv = stages.train_argv(stage, str(tmp_path), seed_overrides(seed, stage))
        assert argv[2] == "--workdir"
        return apply_overrides(load_recipe(argv[1]), parse_override_args(argv[4:]))

    main = {s.name: s for s in stages.chain()}
    seeds = [config(s).data.seed for s in main.values()]
    assert seeds == list(range(8))
    for s in main.values():
        cfg = config(s)
        assert cfg.objective.seed == cfg.data.seed == s.data_seed and cfg.data.synthetic_task == "attributes"
        moved = config(s, 7)
        assert (moved.seed, moved.data.seed, moved.objective.seed) == (7, s.data_seed + 700, s.data_seed + 700)
        assert moved.data.synthetic_seed == 0  # the same task and held-out questions for every seed
    assert seed_overrides(0, main["pbm_b4"]) == ()  # the default run's stage commands are the recipes' own
    pbm = {b: config(main[f"pbm_b{b}"]) for b in (4, 8, 16, 32)}
    for ab in stages.ablations():
        cfg, base = config(ab), config(main[ab.compare_with])
        assert cfg.data.seed == ab.data_seed
        assert cfg.objective.block_size == base.objective.block_size, ab.name
        if ab.name == "direct_b32":
            assert cfg.steps == sum(p.steps for p in pbm.values()) and cfg.data.seed == pbm[4].data.seed
            continue
        assert cfg.steps == base.steps and cfg.data.seed == base.data.seed, ab.name
        differs = {k for k in ("noise", "shift_labels", "teacher_kind", "teacher_init_from", "teacher_block_size")
                   if getattr(cfg.objective, k) != getattr(base.objective, k)}
        assert differs == {"pbm_b4_mix": {"noise"}, "pbm_b4_shift": {"shift_labels"},
                           "swd_b32_ar_teacher": {"teacher_kind", "teacher_init_from", "teacher_block_size"}
                           }[ab.name], ab.name


def test_a_workdir_holds_one_seed_and_one_task(tmp_path):
    from bard_jax.minibard.__main__ import claim_workdir

    claim_workdir(str(tmp_path / "a"), 3)
    claim_workdir(str(tmp_path / "a"), 3)  # the same seed resumes
    with pytest.raises(SystemExit, match="--seed 3"):
        claim_workdir(str(tmp_path / "a"), 4)
    with pytest.raises(SystemExit, match="--task attributes"):
        claim_workdir(str(tmp_path / "a"), 3, "digits")
    (tmp_path / "old" / "ar").mkdir(parents=True)  # trained before seeds were recorded: seed 0, the digits task
    with pytest.raises(SystemExit, match="--seed 0"):
        claim_workdir(str(tmp_path / "old"), 1, "digits")
    with pytest.raises(SystemExit, match="--task digits"):
        claim_workdir(str(tmp_path / "old"), 0, "attributes")
    claim_workdir(str(tmp_path / "old"), 0, "digits")
    assert json.load(open(tmp_path / "old" / "seed.json")) == {"seed": 0, "task": "digits"}


def test_paired_sign_test_p_values():
    from bard_jax.minibard import paired

    assert paired.sign_test_p(0, 5) == pytest.approx(2 / 32)  # five of five discordant one way: 2 * 0.5^5
    assert paired.sign_test_p(9, 1) == pytest.approx(2 * 11 / 1024)  # 2 * (C(10,0) + C(10,1)) / 2^10
    assert paired.sign_test_p(3, 3) == 1.0 and paired.sign_test_p(0, 0) == 1.0


def test_ablations_flag_runs_all_or_the_named_ones_in_their_order(capsys):
    from bard_jax.minibard.__main__ import chosen_ablations, parse_args

    assert chosen_ablations(parse_args([])) == []
    everything = [s.name for s in chosen_ablations(parse_args(["--ablations"]))]
    assert everything == ["direct_b32", "swd_b32_ar_teacher", "pbm_b4_mix", "pbm_b4_shift"]
    some = chosen_ablations(parse_args(["--ablations", "pbm_b4_shift,swd_b32_ar_teacher"]))
    assert [s.name for s in some] == ["swd_b32_ar_teacher", "pbm_b4_shift"]
    with pytest.raises(SystemExit):
        parse_args(["--ablations", "pbm_b4_mix,progressive"])
    assert "unknown ablation(s) ['progressive']; known: direct_b32" in capsys.readouterr().err


@pytest.mark.parametrize("flags,fragment", [
    (["--eval-n", "-1"], "--eval-n -1: expected a number of held-out questions, or 0 for all of them"),
    (["--batch", "0"], "--batch 0: expected at least 1 question per decode call"),
    (["--seed", "-2"], "--seed -2: expected a non-negative integer"),
])
def test_numbers_that_would_fail_after_training_are_refused_first(capsys, flags, fragment):
    from bard_jax.minibard.__main__ import parse_args

    with pytest.raises(SystemExit):
        parse_args(flags)
    assert fragment in capsys.readouterr().err


def test_fast_cpu_compiles_leave_xla_flags_alone_when_xla_refuses_the_flag(monkeypatch):
    """XLA aborts on a flag it does not know: the compile-speed flag (used by the smoke run and the test suite) is
    tried in a child process, and the environment stays as it was when the child fails."""
    from bard_jax import cpu_compile

    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    monkeypatch.setattr(cpu_compile, "LEGACY_CPU_EMITTERS", "--xla_no_such_flag_in_any_jaxlib=true")
    assert cpu_compile.use_fast_cpu_compiles() is False
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
