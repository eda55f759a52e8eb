"""`python -m bard_jax.train`: the demo recipe trains (loss falls), resumes exactly, and rejects bad setups."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(workdir, *overrides, check=True):
    cmd = [sys.executable, "-m", "bard_jax.train", "--recipe", os.path.join(REPO, "recipes", "demo.py"),
           "--workdir", str(workdir), "--recipe.data.synthetic_dir", str(workdir.parent / "data"), *overrides]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "XLA_FLAGS": ""})
    if check:
        assert r.returncode == 0, r.stderr[-4000:]
    return r


def losses(workdir):
    return [json.loads(line)["loss"] for line in open(workdir / "metrics.jsonl")]


def final_params(workdir):
    from bard_jax import hf

    return hf.load_converted(str(workdir / "export"), dtype=None)[0]


FAST = ("--recipe.data.synthetic_n", "200", "--recipe.data.global_batch_size", "8",
        "--recipe.data.micro_batch_size", "4", "--recipe.log_every", "1", "--recipe.export_hf", "false",
        "--recipe.data.length_buckets", "256", "--recipe.data.response_buckets", "64")  # one shape: one compile


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    w = tmp_path_factory.mktemp("train") / "straight"
    train(w, *FAST, "--recipe.steps", "24", "--recipe.ckpt_every", "100")
    return w


def test_demo_loss_falls(straight):
    ls = losses(straight)
    assert len(ls) == 24 and np.mean(ls[-6:]) < 0.8 * np.mean(ls[:6]), ls
    assert (straight / "export" / "bard_jax_config.json").is_file()


@pytest.mark.slow  # the default suite checks exact resume through SIGTERM (test_train_failures.py)
def test_resume_is_exact(straight, tmp_path):
    w = tmp_path / "resumed"
    r = train(w, *FAST, "--recipe.steps", "24", "--recipe.ckpt_every", "100", "--recipe.stop_at_step", "12",
              check=False)
    assert r.returncode == 75, r.stderr[-4000:]  # stopped, not finished: `train && next_stage` must not go on
    assert sorted(os.listdir(w / "checkpoints")) == ["12"] and not (w / "export").exists()
    train(w, *FAST, "--recipe.steps", "24", "--recipe.ckpt_every", "100")
    a, b = final_params(straight), final_params(w)
    import jax

    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert losses(w) == losses(straight)  # the data order continued exactly too


@pytest.mark.slow  # suite time; the recipe and setup errors of test_train_inputs / test_train_failures stay
def test_bad_setups_fail_with_clear_errors(tmp_path):
    r = train(tmp_path / "a", *FAST, "--recipe.optim.lr", "1", check=False)
    assert r.returncode != 0 and "unknown recipe key 'optim.lr'" in r.stderr
    r = train(tmp_path / "b", *FAST, "--recipe.objective.kind", "swd", check=False)
    assert r.returncode != 0 and "teacher checkpoint not found" in r.stderr
    r = train(tmp_path / "c", *FAST, "--recipe.mesh.data", "3", check=False)
    assert r.returncode != 0 and "mesh.data x mesh.fsdp x mesh.tensor = 3 x -1 x 1 does not fit the 1 devices" \
        in r.stderr
    r = train(tmp_path / "d", *FAST, "--recipe.data.question_types", "colour", check=False)
    assert r.returncode != 0 and "data.question_types ['colour']: no sample of" in r.stderr and "'number'" in r.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was written


def test_question_types_keep_only_the_named_samples():
    from bard_jax.train.setup import SetupError, keep_question_types

    records = [{"meta": {"qtype": q}, "messages": []} for q in ("count", "number", "list", "number")] + [
        {"messages": []}]
    assert keep_question_types(records, (), "x.jsonl") == records
    kept = keep_question_types(records, ("number", "list"), "x.jsonl")
    assert [r["meta"]["qtype"] for r in kept] == ["number", "list", "number"]
    with pytest.raises(SetupError, match=r"\['None', 'count', 'list', 'number'\]"):
        keep_question_types(records, ("where",), "x.jsonl")


@pytest.mark.parametrize("mergers", [pytest.param("language", marks=pytest.mark.slow), "vision"])  # suite time
def test_mergers_follow_the_named_group(mergers):
    """With the vision group's rate at 0, the tower never moves, the mergers move only when they follow the
    language group, and the text model always moves."""
    import jax
    import jax.numpy as jnp
    import optax

    from bard_jax.config import preset
    from bard_jax.modeling import init_params
    from bard_jax.sharding import path_str
    from bard_jax.train.optimizer import GroupSchedule, OptimizerConfig, make_optimizer

    params = init_params(preset("tiny"), jax.random.key(0))
    cfg = OptimizerConfig(language=GroupSchedule(1e-2), vision=GroupSchedule(0.0), warmup_steps=0, mergers=mergers)
    tx, _ = make_optimizer(cfg, 10, params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    moved = {path_str(p): bool(jnp.any(a != b)) for (p, a), b in
             zip(jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(new))}
    merger = [v for k, v in moved.items() if k.startswith(("visual/merger/", "visual/deepstack_merger_list/"))]
    tower = [v for k, v in moved.items() if k.startswith("visual/blocks/")]
    text = [v for k, v in moved.items() if k.startswith("language_model/layers/")]
    assert merger and tower and text
    assert all(merger) if mergers == "language" else not any(merger)
    assert not any(tower) and all(text)


def test_held_group_gets_no_gradient_and_stays_out_of_the_clip_norm():
    import jax.numpy as jnp

    from bard_jax.train.optimizer import GroupSchedule, OptimizerConfig, make_optimizer, trainable_mask
    from bard_jax.train.step import init_state, make_train_step

    params = {"language_model": {"w": jnp.zeros(3)}, "visual": {"blocks": {"w": jnp.zeros(4)}}}
    x = jnp.arange(1.0, 5.0)

    def loss_fn(p, micro, teacher, n):  # the held tower's gradient (x * 100) would dominate any norm
        loss = jnp.sum(p["language_model"]["w"] * x[:3]) + 100.0 * jnp.sum(p["visual"]["blocks"]["w"] * x)
        return loss * jnp.mean(micro["one"]), {}

    cfg = OptimizerConfig(language=GroupSchedule(1e-1, start_ratio=1.0), vision=GroupSchedule(0.0), warmup_steps=0,
                          clip_norm=1.0, mergers="vision")
    assert trainable_mask(cfg, params) == {"language_model": {"w": True}, "visual": {"blocks": {"w": False}}}
    tx, schedules = make_optimizer(cfg, 10, params)
    batch = {"one": jnp.ones((1, 2))}
    held, m_held = make_train_step(loss_fn, tx, schedules, global_batch_size=2,
                                   trainable=trainable_mask(cfg, params))(init_state(params, tx, 0), batch, None)
    _, m_all = make_train_step(loss_fn, tx, schedules, global_batch_size=2)(init_state(params, tx, 0), batch, None)
    assert float(m_held["grad_norm"]) == pytest.approx(float(jnp.linalg.norm(x[:3])))  # the language side only
    assert float(m_all["grad_norm"]) > 100.0
    assert not jnp.any(held.params["visual"]["blocks"]["w"])
    assert jnp.all(held.params["language_model"]["w"] < 0)  # trained


def test_unknown_merger_group_is_a_clear_error():
    from bard_jax.train.optimizer import OptimizerConfig, check_optimizer_config

    with pytest.raises(ValueError, match="optim.mergers must be one of .* got 'tower'"):
        check_optimizer_config(OptimizerConfig(mergers="tower"))


def test_generate_cli_on_the_trained_demo(straight):
    image = sorted((straight.parent / "data").glob("images/*.png"))[0]
    cmd = [sys.executable, "-m", "bard_jax.generate", "--model", str(straight / "export"), "--prompt",
           "how many red shapes are there ?", "--image", str(image), "--max-new-tokens", "8", "--steps", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "nfe" in r.stderr and "tokens/forward" in r.stderr
    bad = subprocess.run(cmd[:-6] + ["--image", str(straight / "missing.png")], capture_output=True, text=True,
                         cwd=REPO)
    assert bad.returncode == 1 and "missing.png cannot be read" in bad.stderr


@pytest.mark.slow  # two training runs per case (~50 s): run with `pytest -m slow`
@pytest.mark.parametrize("objective", ["pbm", "swd"])
def test_sharded_equals_unsharded(straight, tmp_path, objective):
    """The same 3 steps on 1 device and on a (data 2, fsdp 2, tensor 2) mesh of 8 fake CPU devices."""
    extra = ["--recipe.steps", "3", "--recipe.ckpt_every", "100", "--recipe.model.init_from", str(straight)]
    if objective == "swd":
        extra += ["--recipe.objective.kind", "swd", "--recipe.objective.block_size", "8",
                  "--recipe.objective.teacher_init_from", str(straight)]
    runs = {}
    for name, mesh, devices in (("one", ("1", "1", "1"), 1), ("eight", ("2", "2", "2"), 8)):
        w = tmp_path / name
        cmd = [sys.executable, "-m", "bard_jax.train", "--recipe", os.path.join(REPO, "recipes", "demo.py"),
               "--workdir", str(w), "--recipe.data.synthetic_dir", str(straight.parent / "data"), *FAST, *extra,
               "--recipe.mesh.data", mesh[0], "--recipe.mesh.fsdp", mesh[1], "--recipe.mesh.tensor", mesh[2]]
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
        assert r.returncode == 0, r.stderr[-4000:]
        runs[name] = w
    np.testing.assert_allclose(losses(runs["eight"]), losses(runs["one"]), rtol=2e-5)
    import jax

    for a, b in zip(jax.tree_util.tree_leaves(final_params(runs["one"])),
                    jax.tree_util.tree_leaves(final_params(runs["eight"]))):
        # Adam divides by the gradient's running RMS, so where a gradient is ~0 a last-bit difference in a
        # sharded reduction moves the update by a fraction of the learning rate: compare on that scale
        # (1e-3 of the peak learning rate per step; the demo's peak is 3e-3).
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=3 * 1e-3 * 3e-3)

