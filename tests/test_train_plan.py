"""The train loop's pieces at scale: the step plan shared by the loop and the dry run (sharded == unsharded), the
sticky NaN guard and the lazy metrics check, asynchronous atomic checkpoints, meshes from `jax.make_mesh` and
their division checks, and the dry run's verdict against a device-memory budget."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train import REPO

from bard_jax import cli
from bard_jax.config import preset
from bard_jax.diffusion import layout
from bard_jax.errors import InputError
from bard_jax.modeling import init_params
from bard_jax.sharding import check_mesh_divides, make_mesh
from bard_jax.train import setup
from bard_jax.train.checkpoint import Checkpointer, abstract_like
from bard_jax.train.config import DataSection, MeshSection, ModelSection, ObjectiveSection, TrainConfig
from bard_jax.train.dry_run import MemoryPlan, detected_device_memory, parse_bytes
from bard_jax.train.loop import main, non_finite_message
from bard_jax.train.metrics import MetricsWriter, NonFiniteStep, PendingSteps
from bard_jax.train.optimizer import GroupSchedule, OptimizerConfig
from bard_jax.train.step import init_state, make_train_step

DEMO = os.path.join(REPO, "recipes", "demo.py")
PEAK_LR = 3e-3


# ------------------------------------------------------------------------------------------------ sharded step
def tiny_recipe(mesh: tuple[int, int, int]) -> TrainConfig:
    """Global batch 8 in micro-batches of 4 (two accumulated), one 64-token bucket, float32 compute."""
    return TrainConfig(
        name="tiny", steps=10, model=ModelSection(preset="tiny", compute_dtype="float32"),
        data=DataSection(global_batch_size=8, micro_batch_size=4, length_buckets=(64,), response_buckets=(16,),
                         patch_buckets=(16,), max_images=1),
        objective=ObjectiveSection(kind="pbm", block_size=4),
        # Adam's eps well above the gradients' rounding: its first update, lr * g / (|g| + eps), would otherwise
        # turn a last-bit difference of a ~0 gradient (another reduction order across devices) into ~lr.
        optim=OptimizerConfig(language=GroupSchedule(PEAK_LR, 1.0), vision=GroupSchedule(PEAK_LR, 1.0),
                              warmup_steps=0, eps=1e-3),
        mesh=MeshSection(*mesh),
    )


def one_layer():
    """The tiny preset with one text layer and one vision block: the same program shapes, less to compile."""
    c = preset("tiny")
    return c.replace(text=dataclasses.replace(c.text, num_hidden_layers=1),
                     vision=dataclasses.replace(c.vision, depth=1))


def text_batch(c, n: int = 8) -> dict[str, np.ndarray]:
    """n packed text-only examples of random lengths, collated as the stream does (no image keys)."""
    rng = np.random.default_rng(0)
    kw = dict(pad_token_id=3, image_token_id=c.image_token_id, video_token_id=c.video_token_id,
              spatial_merge_size=2)
    samples = [layout.pack_sample(rng.integers(5, 900, rng.integers(4, 20)), rng.integers(5, 900, rng.integers(3, 13)),
                                  4, **kw) for _ in range(n)]
    batch = layout.collate_packed(samples, 64, 16)
    batch["example_index"] = np.arange(100, 100 + n, dtype=np.int64)
    return batch


def one_step(mesh_shape, host_batch, params):
    """One step of the loop's compiled program (plan, device batch, control) on a mesh of the first devices."""
    cfg = tiny_recipe(mesh_shape)
    mesh = make_mesh(mesh_shape, jax.devices()[: int(np.prod(mesh_shape))])
    obj = setup.objective_config(cfg, 1024, 1023, 3)
    plan = setup.plan_step(cfg, one_layer(), None, obj, mesh)
    state = jax.jit(lambda p: init_state(p, plan.tx, 0), out_shardings=plan.state_shardings)(params)
    state, metrics = plan.step_for(host_batch)(state, plan.device_batch(host_batch), None, plan.control(None, False))
    return jax.device_get(metrics), jax.device_get(state.params)


def test_sharded_step_equals_unsharded():
    """The same step (two accumulated micro-batches) on 1 device and on a (data 2, fsdp 2, tensor 2) mesh."""
    params = init_params(one_layer(), jax.random.key(0))
    batch = text_batch(one_layer())
    m1, p1 = one_step((1, 1, 1), batch, params)
    m8, p8 = one_step((2, 2, 2), batch, params)
    assert bool(m1["applied"]) and bool(m8["applied"]) and not bool(m8["stop"])
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=2e-5)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(p1), jax.tree_util.tree_leaves(p8)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-4 * PEAK_LR, err_msg=jax.tree_util.keystr(path))


def test_the_batch_schema_admits_the_streams_batches_and_names_what_it_does_not():
    cfg = tiny_recipe((1, 1, 1))
    obj = setup.objective_config(cfg, 1024, 1023, 3)
    schema = setup.largest_batch(cfg, obj, patch_dim=preset("tiny").vision.patch_dim)
    batch = text_batch(preset("tiny"))
    setup.check_batch(batch, schema)
    setup.check_batch({k: v[:4] if k != "positions" else v[:, :4] for k, v in batch.items()}, schema, processes=2)
    with pytest.raises(RuntimeError, match=r"'input_ids' is int32\[8, 128\], the schema allows int32\[8, 64\]; "
                                           r"'extra' is not in the schema"):
        setup.check_batch({**batch, "extra": np.zeros(8), "input_ids": np.zeros((8, 128), np.int32)}, schema)


# ------------------------------------------------------------------------------------------------ NaN guard
def test_nan_guard_is_sticky_until_the_host_looks():
    """A non-finite step holds the state, and so does every later step fed its `applied` flag: what runs between
    the bad step and the host's next check changes nothing."""
    params = {"w": jnp.zeros(2)}
    tx = optax.sgd(0.1)

    def loss_fn(p, micro, teacher, n):
        return jnp.sum(p["w"] * jnp.array([1.0, 2.0])) * jnp.mean(micro["scale"]), {}

    step = jax.jit(make_train_step(loss_fn, tx, {}, global_batch_size=1))
    state = init_state(params, tx, 0)
    bad, good = {"scale": jnp.full((1, 1), jnp.nan)}, {"scale": jnp.ones((1, 1))}
    held, m1 = step(state, bad, None, jnp.bool_(True))
    assert not bool(m1["finite"]) and not bool(m1["applied"])
    held, m2 = step(held, good, None, m1["applied"])
    assert bool(m2["finite"]) and not bool(m2["applied"])  # finite, yet held: an earlier step was not
    assert int(held.step) == 0 and not jnp.any(held.params["w"])
    moved, m3 = step(held, good, None, jnp.bool_(True))
    assert bool(m3["applied"]) and int(moved.step) == 1 and jnp.all(moved.params["w"] < 0)


def test_lazy_check_writes_the_rows_before_a_non_finite_step_and_names_it(tmp_path):
    writer = MetricsWriter(str(tmp_path), total_steps=10, enabled=True)
    pending = PendingSteps(writer, log_every=2, total_steps=10)
    for step in range(1, 6):
        ok = step != 4
        pending.add(step, {"loss": jnp.float32(1.0 / step if ok else jnp.nan), "grad_norm": jnp.float32(2.0),
                           "finite": jnp.bool_(ok), "applied": jnp.bool_(step < 4), "stop": jnp.bool_(False)},
                    np.arange(4 * step, 4 * step + 4))
    with pytest.raises(NonFiniteStep) as e:
        pending.check()
    writer.close()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [2] and rows[0]["loss"] == 0.5 and "applied" not in rows[0]
    bad = e.value
    assert (bad.step, bad.checked_at, bad.examples.tolist()) == (4, 5, [16, 17, 18, 19])
    assert non_finite_message(bad, [16, 17, 18, 19], 2, "/ck") == (
        "non-finite loss at step 4 (loss=nan, grad_norm=2.0) on examples [16, 17, 18, 19]; the update was not "
        "applied, nor that of step 5, and the last good checkpoint (2) is kept in /ck")
    assert len(pending) == 0


# ------------------------------------------------------------------------------------------------ checkpoints
FINGERPRINT = {"text": [1, 2]}


def test_saves_are_asynchronous_and_the_saved_state_may_be_donated_at_once(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "c"), keep=3)
    state = {"w": jnp.arange(100_000, dtype=jnp.float32), "m": {"v": jnp.ones((64, 64))}}
    abstract = abstract_like(state, jax.tree_util.tree_map(lambda x: x.sharding, state))
    bump = jax.jit(lambda s: jax.tree_util.tree_map(lambda x: x + 1, s), donate_argnums=0)
    ckpt.save(1, state, {"step": 1, "fingerprint": FINGERPRINT})
    state = bump(state)  # overwrites the buffers the save was given while it may still be writing
    ckpt.save(2, state, {"step": 2, "fingerprint": FINGERPRINT})  # finishes save 1 first
    ckpt.wait_until_finished()
    assert sorted(os.listdir(tmp_path / "c")) == ["1", "2"]
    for step, offset in ((1, 0), (2, 1)):
        restored, meta = ckpt.restore(step, abstract, FINGERPRINT)
        assert meta["step"] == step
        np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(100_000) + offset)
        np.testing.assert_array_equal(np.asarray(restored["m"]["v"]), np.ones((64, 64)) + offset)
    ckpt.close()


KILLED_AT_COMMIT = """
import os, sys
import jax.numpy as jnp
from orbax.checkpoint._src.path import atomicity
from bard_jax.train.checkpoint import Checkpointer

ckpt = Checkpointer(sys.argv[1], keep=3)
state = {"w": jnp.arange(1000.0)}
ckpt.save(1, state, {"step": 1, "fingerprint": {}})
ckpt.wait_until_finished()

async def killed(self):  # every file of the step is written; the process dies before the commit
    os._exit(0)

atomicity.AtomicRenameTemporaryPath.finalize = killed
ckpt.save(2, {"w": state["w"] * 2}, {"step": 2, "fingerprint": {}})
ckpt.wait_until_finished()
raise SystemExit("not reached")
"""


def test_a_save_killed_before_its_commit_is_never_taken_for_a_checkpoint(tmp_path):
    directory = tmp_path / "c"
    r = subprocess.run([sys.executable, "-c", KILLED_AT_COMMIT, str(directory)], capture_output=True, text=True,
                       cwd=REPO, env={**os.environ, "XLA_FLAGS": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    left = sorted(os.listdir(directory))
    assert left[0] == "1" and len(left) == 2 and left[1].startswith("2.") and "tmp" in left[1], left
    ckpt = Checkpointer(str(directory), keep=3)  # the killed save's temporary directory is removed
    abstract = {"w": jax.ShapeDtypeStruct((1000,), jnp.float32)}
    state, meta = ckpt.restore_latest(abstract, {})
    assert meta["step"] == 1 and sorted(os.listdir(directory)) == ["1"]
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(1000.0))
    ckpt.save(2, {"w": jnp.arange(1000.0) * 2}, {"step": 2, "fingerprint": {}})  # the resumed run saves step 2
    assert ckpt.restore_latest(abstract, {})[1]["step"] == 2
    ckpt.close()


# ------------------------------------------------------------------------------------------------ meshes
def test_meshes_come_from_jax_make_mesh_and_must_divide_batch_and_heads():
    mesh = make_mesh((2, 2, 2))
    expected = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    assert mesh.axis_names == ("data", "fsdp", "tensor") and (mesh.devices == expected.devices).all()
    assert dict(make_mesh((-1, 2, 1)).shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    with pytest.raises(InputError, match=r"needs 3 devices, but 8 are available"):
        make_mesh((3, 1, 1))
    check_mesh_divides(mesh, ("data.micro_batch_size", 4), {"heads": 4})
    with pytest.raises(InputError, match=r"data.micro_batch_size 6 is not a multiple of the mesh's batch shards "
                                         r"\(data 2 x fsdp 2 = 4\)"):
        check_mesh_divides(mesh, ("data.micro_batch_size", 6), {})
    heads = setup.head_counts(preset("tiny"), None)
    assert heads == {"text query heads": 4, "text key/value heads": 2, "vision heads": 2}
    with pytest.raises(InputError, match=r"tensor axis \(4\) does not divide the text key/value heads \(2\), "
                                         r"vision heads \(2\)"):
        check_mesh_divides(make_mesh((2, 1, 4)), ("data.micro_batch_size", 4), heads)


# ------------------------------------------------------------------------------------------------ dry run
def test_device_memory_sizes():
    assert parse_bytes("80GB", "x") == 80 * 10**9
    assert parse_bytes("80GiB", "x") == 80 * 2**30
    assert parse_bytes("96e9", "x") == 96 * 10**9
    assert parse_bytes("1.5 tib", "x") == int(1.5 * 2**40)
    for bad in ("eighty", "80XB", "0", "-5GB", "nan", "inf GB", ""):
        with pytest.raises(InputError, match="expected a size such as 80GB, 80GiB or 96e9"):
            parse_bytes(bad, "--device-memory")
    with pytest.raises(InputError, match=r"--device-memory '80' is 80 bytes: a size needs a unit, such as 80GB or "
                                         r"80GiB \(a bare number is bytes\)"):
        parse_bytes("80", "--device-memory")
    assert detected_device_memory() is None  # CPU devices: no budget unless one is given


def test_memory_verdict_names_the_largest_parts():
    plan = MemoryPlan(name="r", header=("plan",), arguments=10 * 2**30, temporaries=70 * 2**30, outputs=9 * 2**30,
                      aliased=8 * 2**30, parts={"params": 3 * 2**30, "optimizer state": 6 * 2**30,
                                                "batch": 2**30, "temporaries": 70 * 2**30,
                                                "outputs not in donated buffers": 2**30})
    assert plan.total == 81 * 2**30
    assert "fits in 90.00 GiB per device (b), 9.00 GiB to spare" in plan.report(90 * 2**30, "b")
    assert plan.fits(90 * 2**30) and plan.fits(None) and not plan.fits(80 * 10**9)
    assert plan.verdict(80 * 10**9, "--device-memory 80GB") == (
        "does NOT fit in 74.51 GiB per device (--device-memory 80GB): it needs 81.00 GiB; largest parts: "
        "temporaries 70.00 GiB, optimizer state 6.00 GiB, params 3.00 GiB")


SMALL = ("--recipe.data.global_batch_size", "8", "--recipe.data.micro_batch_size", "8",
         "--recipe.data.length_buckets", "64", "--recipe.data.response_buckets", "16")


@pytest.mark.slow  # suite time; the verdict and size parsing are tested without compiling above
def test_dry_run_compiles_the_loop_step_and_refuses_a_budget_it_exceeds(capsys, monkeypatch):
    """The dry run builds the loop's step (setup.plan_step) and compiles it for the largest batch; over budget it
    prints the plan, then one error line naming the largest parts, and exits 1."""
    monkeypatch.setattr(setup, "planned_config", lambda path, fallback: one_layer())  # less to compile
    status = cli.run(main, "python -m bard_jax.train", ["--recipe", DEMO, "--dry-run", "--recipe.mesh.data", "2",
                                                         "--recipe.mesh.fsdp", "4", *SMALL, "--device-memory", "1MiB"])
    out, err = capsys.readouterr()
    assert status == 1, err
    assert "dry run of demo: mesh {'data': 2, 'fsdp': 4, 'tensor': 1} (8 devices, cpu)" in out
    assert "per device: params" in out and "| temporaries " in out and "XLA memory analysis per device" in out
    assert "verdict: does NOT fit in 1.00 MiB per device (--device-memory 1MiB)" in out
    assert "python -m bard_jax.train: error: demo does NOT fit in 1.00 MiB per device (--device-memory 1MiB): " \
           "it needs" in err and "largest parts: temporaries" in err


@pytest.mark.parametrize("extra, message", [
    (("--dry-run", "--recipe.mesh.data", "2", "--recipe.mesh.tensor", "4"),
     "mesh.tensor 4 does not divide the text key/value heads (2), vision heads (2): attention is split over the "
     "tensor axis by whole heads; use mesh.tensor in [1, 2]"),
    (("--dry-run", "--device-memory", "lots"), "--device-memory 'lots': expected a size such as 80GB"),
    (("--device-memory", "80GB"), "--device-memory plans a --dry-run"),
])
def test_dry_run_settings_that_cannot_plan_are_one_line_errors_before_compiling(capsys, extra, message):
    status = cli.run(main, "python -m bard_jax.train", ["--recipe", DEMO, *SMALL, *extra])
    err = capsys.readouterr().err
    assert status == 1 and message in err, err
