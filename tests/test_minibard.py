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


@pytest.mark.slow  # about 4 minutes on 2 cores, most of the default suite's budget: run with -m slow
def test_smoke_run_trains_every_stage_and_writes_the_results(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bard_jax.minibard", "--smoke", "--workdir", str(tmp_path / "w")],
                       capture_output=True, text=True, cwd=REPO, env={**os.environ, "XLA_FLAGS": ""})
    assert r.returncode == 0, r.stderr[-4000:]
    out = tmp_path / "w" / "results"
    results = json.load(open(out / "minibard.json"))
    for stage in ("ar", "pbm_b4", "pbm_b8", "pbm_b16", "pbm_b32", "swd_b8", "swd_b16", "swd_b32"):
        assert (tmp_path / "w" / stage / "export").is_dir(), stage
        assert (tmp_path / "w" / stage / "metrics.jsonl").is_file(), stage
    ar = results["ar"]
    assert 0 <= ar["exact_match"] <= 1 and ar["nfe"] >= 1 and ar["tokens_per_second"] > 0
    models = results["models"]
    assert {m["name"] for m in models} == {"pbm_b4", "pbm_b8", "pbm_b16", "pbm_b32", "swd_b8", "swd_b16", "swd_b32"}
    for m in models:
        assert MODEL_KEYS <= set(m), m
        assert 0 <= m["exact_match"] <= 1 and 0 <= m["token_accuracy"] <= 1 and m["nfe"] >= 2
        assert m["swd"] == m["name"].startswith("swd")
    kinds = {(m["strategy"], m["commit"]) for m in models}
    assert kinds == {("low_confidence_static", "forward"), ("low_confidence_dynamic", "forward"),
                     ("low_confidence_dynamic", "reuse")}
    assert "swd_recovered_fraction" in results["headline"]
    assert "| swd_b32 |" in open(out / "minibard.md").read()
    for png in ("minibard_accuracy_vs_tpf.png", "minibard_losses.png"):
        assert (out / png).stat().st_size > 1000


def _m(name, exact, tpf=1.0, tps=100.0, threshold=0.9, commit="forward"):
    return {"name": name, "exact_match": exact, "tokens_per_forward": tpf, "tokens_per_second": tps,
            "strategy": "low_confidence_dynamic", "denoising_steps": 4, "threshold": threshold, "commit": commit}


def test_headline_targets_arithmetic():
    ref = {"strategy": "low_confidence_dynamic", "threshold": 0.9, "commit": "forward"}
    results = {"ar": {"exact_match": 0.95, "tokens_per_second": 50.0},
               "models": [_m("pbm_b4", 0.94), _m("pbm_b32", 0.70), _m("swd_b32", 0.90, tpf=3.5, tps=150.0),
                          _m("swd_b32", 0.97, threshold=0.95, tps=120.0), _m("pbm_b4", 0.99, commit="reuse",
                                                                              tps=80.0)]}
    h = report.headline(results, ref)
    assert h["swd_recovered_fraction"] == pytest.approx((0.90 - 0.70) / (0.94 - 0.70))
    assert h["swd_b32_gap_to_ar_points"] == pytest.approx(5.0)
    assert h["fastest_at_ar_accuracy"]["tokens_per_second"] == 120.0
    assert h["speedup_vs_ar_at_equal_accuracy"] == pytest.approx(120.0 / 50.0)
    # Only the swd_b32 setting at >= 3 tokens per forward counts for the B32 target, however accurate the others.
    assert h["swd_b32_best_at_3_tokens_per_forward"]["exact_match"] == 0.90
    assert h["swd_b32_best_at_3_tokens_per_forward"]["gap_to_ar_points"] == pytest.approx(5.0)
    results["models"] = [m for m in results["models"] if m["tokens_per_forward"] < 3.0]
    assert "swd_b32_best_at_3_tokens_per_forward" not in report.headline(results, ref)


def test_chain_order_inputs_and_skipping_finished_stages(tmp_path, capsys):
    from bard_jax.minibard import stages

    chain = stages.chain()
    assert [s.name for s in chain] == ["ar", "pbm_b4", "pbm_b8", "pbm_b16", "pbm_b32", "swd_b8", "swd_b16",
                                       "swd_b32"]
    argv = stages.train_argv(chain[-1], str(tmp_path))
    assert f"--recipe.model.init_from={tmp_path / 'pbm_b32'}" in argv
    assert f"--recipe.objective.teacher_init_from={tmp_path / 'pbm_b4'}" in argv
    assert os.path.isfile(argv[1])
    (tmp_path / "ar" / "export").mkdir(parents=True)
    assert stages.run_stage(chain[0], str(tmp_path)) == 0.0  # finished: not trained again
    assert "already trained, skipped" in capsys.readouterr().out


def test_seed_reaches_every_random_choice_of_every_stage(tmp_path):
    from bard_jax.minibard import stages
    from bard_jax.minibard.__main__ import seed_overrides
    from bard_jax.train.recipe import apply_overrides, load_recipe, parse_override_args

    assert seed_overrides(0) == ()  # the default run's stage commands are the recipes' own
    for stage in stages.chain():
        argv = stages.train_argv(stage, str(tmp_path), seed_overrides(7))
        assert argv[2] == "--workdir"
        cfg = apply_overrides(load_recipe(argv[1]), parse_override_args(argv[4:]))
        assert (cfg.seed, cfg.data.seed, cfg.objective.seed) == (7, 7, 7), stage.name
        assert cfg.data.synthetic_seed == 0, stage.name  # the same task and held-out questions for every seed


def test_a_workdir_holds_one_seed(tmp_path):
    from bard_jax.minibard.__main__ import claim_workdir

    claim_workdir(str(tmp_path / "a"), 3)
    claim_workdir(str(tmp_path / "a"), 3)  # the same seed resumes
    with pytest.raises(SystemExit, match="--seed 3"):
        claim_workdir(str(tmp_path / "a"), 4)
    (tmp_path / "old" / "ar").mkdir(parents=True)  # trained before seeds were recorded: the default seed
    with pytest.raises(SystemExit, match="--seed 0"):
        claim_workdir(str(tmp_path / "old"), 1)
    claim_workdir(str(tmp_path / "old"), 0)
    assert json.load(open(tmp_path / "old" / "seed.json")) == {"seed": 0}


def test_paired_sign_test_p_values():
    from bard_jax.minibard import paired

    assert paired.sign_test_p(0, 5) == pytest.approx(2 / 32)  # five of five discordant one way: 2 * 0.5^5
    assert paired.sign_test_p(9, 1) == pytest.approx(2 * 11 / 1024)  # 2 * (C(10,0) + C(10,1)) / 2^10
    assert paired.sign_test_p(3, 3) == 1.0 and paired.sign_test_p(0, 0) == 1.0
