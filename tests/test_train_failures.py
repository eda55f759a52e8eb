"""How `python -m bard_jax.train` fails and recovers: SIGTERM (checkpoint, exit 75, exact resume), a non-finite
loss (non-zero exit naming the step and examples, the last good checkpoint kept), a checkpoint of a different
recipe shape (refused before compiling, left untouched); and what the SWD teacher sees (the student's inputs)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import FAST, REPO, final_params, losses

import bard_jax as bj
from bard_jax.diffusion import layout, noise
from bard_jax.diffusion import losses as losses_lib
from bard_jax.diffusion.losses import ObjectiveConfig, loss_fn
from bard_jax.model import hidden as hidden_lib
from bard_jax.model.attention import mask_to_numpy
from bard_jax.train.workdir import LOCK_FILE


def command(workdir, *overrides):
    return [sys.executable, "-m", "bard_jax.train", "--recipe", os.path.join(REPO, "recipes", "demo.py"),
            "--workdir", str(workdir), "--recipe.data.synthetic_dir", str(workdir.parent / "data"), *FAST,
            *overrides]


def environment(workdir, **extra):
    # The module's runs share one persistent compilation cache (same shapes, same executable: ~20 s saved a run).
    return {**os.environ, "XLA_FLAGS": "", "JAX_COMPILATION_CACHE_DIR": str(workdir.parent / "jax_cache"), **extra}


def run(workdir, *overrides, env=None):
    return subprocess.run(command(workdir, *overrides), capture_output=True, text=True, cwd=REPO,
                          env=environment(workdir, **(env or {})))


N_STEPS = 12  # enough for a SIGTERM after step 3 to land before the end
STEPS = ("--recipe.steps", str(N_STEPS), "--recipe.ckpt_every", "100")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("failures")  # one synthetic data dir (root/data) for the whole module


@pytest.fixture(scope="module")
def straight(root):
    w = root / "straight"
    r = run(w, *STEPS)
    assert r.returncode == 0, r.stderr[-4000:]
    return w


def tree_digest(path) -> dict[str, str]:
    """relative path -> sha256 of every file under `path` (directories included as entries), but the workdir's
    lock file, which names whichever run held the workdir last."""
    out = {}
    for d, dirs, files in os.walk(path):
        for name in dirs:
            out[os.path.relpath(os.path.join(d, name), path)] = "dir"
        for name in files:
            if name == LOCK_FILE and os.path.samefile(d, path):
                continue
            p = os.path.join(d, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def steps_logged(workdir) -> list[int]:
    import json

    return [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]


# ------------------------------------------------------------------------------------------------ SIGTERM
def test_sigterm_saves_exits_75_and_resumes_exactly(straight, root):
    w = root / "sigterm"
    w.mkdir()
    with open(w.parent / "sigterm.log", "w+") as log:  # the run's messages go to stdout, its progress to stderr
        proc = subprocess.Popen(command(w, *STEPS), stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env=environment(w))
        try:
            deadline = time.time() + 300
            metrics = w / "metrics.jsonl"
            while time.time() < deadline and proc.poll() is None:
                if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, "the run ended before it could be signalled"
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        log.seek(0)
        output = log.read()
    assert rc == 75, output[-4000:]  # stopped before the last step: a distinct status, so a chain does not go on
    first = steps_logged(w)
    stopped = first[-1]
    assert first == list(range(1, stopped + 1)) and 3 <= stopped < N_STEPS, first
    assert f"SIGTERM: saved step {stopped}, exiting with status 75 (not finished, no export); re-run to resume" \
        in output
    assert sorted(os.listdir(w / "checkpoints")) == [str(stopped)]
    assert not (w / "export").exists()

    r = run(w, *STEPS)  # the same command resumes
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"steps {stopped}->{N_STEPS}" in r.stdout
    assert steps_logged(w) == list(range(1, N_STEPS + 1))
    assert losses(w) == losses(straight)  # same losses step for step: the data order continued exactly
    a, b = final_params(straight), final_params(w)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x), err_msg=jax.tree_util.keystr(path))


# ------------------------------------------------------------------------------------------------ non-finite loss
def test_non_finite_loss_stops_naming_step_and_examples_and_keeps_the_last_checkpoint(root):
    """A huge learning rate (AdamW's step is ~lr whatever the gradient, so clipping cannot tame it) makes the first
    update blow the weights up to ~1e29: the second forward overflows to a NaN loss."""
    w = root / "nan"
    r = run(w, "--recipe.steps", "6", "--recipe.ckpt_every", "1", "--recipe.optim.language.peak_lr", "1e30",
            "--recipe.optim.vision.peak_lr", "1e30", env={"JAX_LOG_COMPILES": "1"})
    assert r.returncode != 0
    assert "train_step" in r.stderr  # the compile log names the step (the mismatch test relies on that)
    # Batch 2 of a global batch of 8 holds the stream positions 8..15 (no sample of the demo set is skipped).
    msg = ("non-finite loss at step 2 (loss=nan, grad_norm=nan) on examples [8, 9, 10, 11, 12, 13, 14, 15]; "
           f"the update was not applied and the last good checkpoint (1) is kept in {w / 'checkpoints'}")
    assert msg in r.stderr, r.stderr[-3000:]
    # What was written stays: the step-1 metrics line, and checkpoint 1, which restores.
    assert steps_logged(w) == [1] and np.isfinite(losses(w)[0])
    assert sorted(os.listdir(w / "checkpoints")) == ["1"]
    import orbax.checkpoint as ocp

    mgr = ocp.CheckpointManager(str(w / "checkpoints"))
    assert mgr.all_steps() == [1]
    restored = mgr.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                      meta=ocp.args.JsonRestore()))
    meta, state = restored["meta"], restored["state"]
    data_state = dict(meta["data_state"])
    assert len(data_state.pop("data_digest")) == 16  # which records (tests/test_data_failures.py checks its use)
    assert meta["step"] == 1 and data_state == {"batch_number": 1, "skipped": {}, "records": 200}
    assert int(np.asarray(state["step"])) == 1
    leaves = jax.tree_util.tree_leaves(state["params"])
    assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)
    mgr.close()


# ------------------------------------------------------------------------------------------------ recipe mismatch
def test_checkpoint_of_another_recipe_shape_is_refused_before_compiling_and_left_untouched(straight):
    before = tree_digest(straight)
    r = run(straight, *STEPS, "--recipe.model.vocab_size", "128", "--recipe.objective.block_size", "8",
            env={"JAX_LOG_COMPILES": "1"})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"checkpoint {straight / 'checkpoints'}/{N_STEPS} was written by a different recipe shape" in r.stderr
    vocab = json.load(open(straight.parent / "data" / "tokenizer" / "task.json"))["vocab_size"]
    assert f"text: checkpoint has [{vocab}, 64, 128, 2, 4, 2, 32], recipe has [128, 64, 128, 2, 4, 2, 32]" in r.stderr
    assert "objective: checkpoint has ['pbm', 4], recipe has ['pbm', 8]" in r.stderr
    assert "train_step" not in r.stderr  # refused before the step was traced or compiled
    assert tree_digest(straight) == before  # checkpoint, metrics and export untouched


def test_unreadable_checkpoint_names_step_and_file_and_loses_nothing(straight, root):
    """The only checkpoint truncated (as a full disk or a killed copy leaves it): one error line naming the step and
    the file, no orbax/tensorstore trace, the workdir untouched; Checkpointer tests cover falling back to an older
    one."""
    import shutil

    w = root / "truncated"
    shutil.copytree(straight, w)
    meta = w / "checkpoints" / str(N_STEPS) / "meta" / "metadata"
    meta.write_bytes(meta.read_bytes()[:9])
    before = tree_digest(w)
    r = run(w, *STEPS)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"no readable checkpoint in {w / 'checkpoints'}: step {N_STEPS}: {meta} is not valid JSON" in r.stderr
    assert "Python is likely shutting down" not in r.stderr
    assert tree_digest(w) == before


def test_micro_batch_that_the_mesh_cannot_split_is_a_clear_error(root):
    for extra in ((), ("--dry-run",)):
        r = run(root / "split", "--recipe.mesh.data", "1", "--recipe.mesh.fsdp", "8", *extra,
                env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
        assert r.returncode != 0
        assert ("data.micro_batch_size 4 is not a multiple of the mesh's batch shards (data 1 x fsdp 8 = 8)"
                in r.stderr), r.stderr[-3000:]


# ------------------------------------------------------------------------------------------------ SWD inputs
@pytest.fixture(scope="module")
def tiny():
    cfg = bj.preset("tiny")
    return bj.Model(bj.init_params(cfg, jax.random.key(1)), cfg)


def image_batch(c, block_size: int) -> dict:
    """Two packed examples (the first with one 4x4-patch image), collated like the training stream."""
    rng = np.random.default_rng(0)
    prefix = np.array([5, 6, c.vision_start_token_id] + [c.image_token_id] * 4 + [c.vision_end_token_id, 7])
    grid = np.array([[1, 4, 4]])
    kw = dict(pad_token_id=3, image_token_id=c.image_token_id, video_token_id=c.video_token_id,
              spatial_merge_size=2)
    samples = [layout.pack_sample(prefix, rng.integers(0, 900, 11), block_size, image_grid_thw=grid, **kw),
               layout.pack_sample(rng.integers(0, 900, 6), rng.integers(0, 900, 5), block_size, **kw)]
    batch = layout.collate_packed(samples, 48, 16)
    pixels = np.zeros((2, 16, c.vision.patch_dim), np.float32)
    pixels[0] = rng.standard_normal((16, c.vision.patch_dim))
    batch["pixel_values"] = pixels
    batch["image_grid_thw"] = np.zeros((2, 1, 3), np.int32)
    batch["image_grid_thw"][0] = grid
    batch["example_index"] = np.array([3, 7], np.int64)
    return {k: jnp.asarray(v) for k, v in batch.items()}


class Recording:
    """Wraps the network `_hidden` builds: records each apply (method name, arguments, params)."""

    def __init__(self, net, log, built_with):
        self.net, self.log, self.built_with = net, log, built_with

    def apply(self, variables, *args, method=None, **kwargs):
        if method.__name__ != "encode_vision":  # runs under vmap: recorded by `recording_vision` instead
            self.log.append({"method": method.__name__, "args": args, "params": variables["params"],
                             "built_with": self.built_with})
        return self.net.apply(variables, *args, method=method, **kwargs)


def recording_vision(real, log):
    """Wraps `hidden.encode_vision`: records the per-example pixels and metadata each model's tower gets."""

    def encode(net, variables, pixels_bpc, meta_bp):
        log.append({"method": "encode_vision", "args": (pixels_bpc, meta_bp), "params": variables["params"]})
        return real(net, variables, pixels_bpc, meta_bp)

    return encode


def test_swd_teacher_and_student_see_the_same_inputs_only_the_mask_differs(tiny, monkeypatch):
    c = tiny.config
    obj = ObjectiveConfig(kind="swd", block_size=8, teacher_block_size=2,
                          noise=noise.NoiseConfig(mask_token_id=1023), remat_policy="full")
    teacher = jax.tree_util.tree_map(lambda x: x * 1.01, tiny.params)
    batch = image_batch(c, obj.block_size)
    log: list[dict] = []
    real = losses_lib.network
    monkeypatch.setattr(losses_lib, "network", lambda *a: Recording(real(*a), log, a))
    monkeypatch.setattr(hidden_lib, "encode_vision", recording_vision(hidden_lib.encode_vision, log))

    @jax.jit
    def traced(params, teacher_params, batch):  # returns what each forward was given (traced once)
        log.clear()
        loss, metrics = loss_fn(params, batch, jax.random.key(0), teacher_params, model_config=c, obj=obj,
                                global_num_samples=2)
        seen = [(e["args"], e["params"]["language_model"]["embed_tokens"]["embedding"]) for e in log
                if e["method"] != "logits"]  # (the head runs inside lax.map: its arguments cannot leave)
        return loss, metrics, seen

    loss, metrics, seen = traced(tiny.params, teacher, batch)
    assert np.isfinite(float(loss)) and float(metrics["masked_tokens"]) > 0
    forwards = [e for e in log if e["method"] != "logits"]
    assert len(seen) == len(forwards) == 6
    s_emb = np.asarray(tiny.params["language_model"]["embed_tokens"]["embedding"])
    t_emb = np.asarray(teacher["language_model"]["embed_tokens"]["embedding"])
    calls = {"student": {}, "teacher": {}}
    for entry, (args, emb) in zip(forwards, seen):
        emb = np.asarray(emb)
        assert np.array_equal(emb, s_emb) != np.array_equal(emb, t_emb)  # one of the two weight sets
        who = "student" if np.array_equal(emb, s_emb) else "teacher"
        assert entry["method"] not in calls[who], "one forward per model"
        calls[who][entry["method"]] = dict(entry, args=args)
    for who in calls:
        assert sorted(calls[who]) == ["decode", "embed", "encode_vision"], who
    s, t = calls["student"], calls["teacher"]
    # The corrupted batch both must see (the student's block size decides the corruption).
    corrupted = noise.corrupt_batch(batch, jax.random.key(0), obj.block_size, obj.noise)
    assert (np.asarray(corrupted["input_ids"]) != np.asarray(batch["input_ids"])).any()

    def same(a, b, what):
        for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"{what}{jax.tree_util.keystr(path)}")

    # pixels and patch metadata
    same(s["encode_vision"]["args"], t["encode_vision"]["args"], "encode_vision")
    np.testing.assert_array_equal(np.asarray(s["encode_vision"]["args"][0]), np.asarray(batch["pixel_values"]))
    # tokens (noisy copy included) and the image windows
    ids_s, _, win_s = s["embed"]["args"]
    ids_t, _, win_t = t["embed"]["args"]
    np.testing.assert_array_equal(np.asarray(ids_s), np.asarray(corrupted["input_ids"]))
    np.testing.assert_array_equal(np.asarray(ids_t), np.asarray(corrupted["input_ids"]))
    np.testing.assert_array_equal(np.asarray(win_s), np.asarray(win_t))
    # positions, token kinds and validity; block ids are each model's own block size
    _, pos_s, info_s, _ = s["decode"]["args"]
    _, pos_t, info_t, _ = t["decode"]["args"]
    np.testing.assert_array_equal(np.asarray(pos_s), np.asarray(batch["positions"]))
    np.testing.assert_array_equal(np.asarray(pos_t), np.asarray(batch["positions"]))
    np.testing.assert_array_equal(np.asarray(info_s.kind), np.asarray(info_t.kind))
    np.testing.assert_array_equal(np.asarray(info_s.valid), np.asarray(info_t.valid))
    np.testing.assert_array_equal(np.asarray(info_s.block), np.asarray(layout.token_info(batch, 8).block))
    np.testing.assert_array_equal(np.asarray(info_t.block), np.asarray(layout.token_info(batch, 2).block))
    # The network options other than the weights' compute schedule (`network`'s third argument, the remat policy)
    # are the same: config, dtype, the mask's clean/noisy rule, the attention implementation.
    built_s, built_t = s["decode"]["built_with"], t["decode"]["built_with"]
    assert built_s[:2] + built_s[3:] == built_t[:2] + built_t[3:] and built_t[2] == "none"
    # ...and the masks do differ (else the teacher would be the student).
    m_s, m_t = mask_to_numpy(info_s, info_s), mask_to_numpy(info_t, info_t)
    assert m_s.shape == m_t.shape and (m_s != m_t).any()
