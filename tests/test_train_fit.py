"""Recipes that fit as shipped: the run's mesh and its division checks naming recipe keys, a micro-batch of -1,
every shipped recipe's mesh and shardings (planned at a reduced model size), the search for settings that fit, and
the dry run's phases."""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import pytest
from test_train import REPO
from test_train_plan import DEMO, one_layer

from bard_jax import cli
from bard_jax.config import preset
from bard_jax.errors import InputError
from bard_jax.train import dry_run, fit_search, memory_plan, setup
from bard_jax.train import recipe as recipe_lib
from bard_jax.train.config import MeshSection, TrainConfig, check_train_config
from bard_jax.train.fit_search import overrides, settings
from bard_jax.train.loop import main
from bard_jax.train.memory_plan import MemoryPlan, Talk
from bard_jax.train.mesh import resolve_for_mesh, run_mesh

GiB = 2**30
# The sizes the release ran each stage at (spec section 7).
RELEASED = {"pbm_b4": ("2b", "4b", "8b"), "pbm_b8": ("4b",), "pbm_b16": ("4b",), "pbm_b32": ("4b",),
            "swd_b8": ("2b", "4b"), "swd_b16": ("2b", "4b"), "swd_b32": ("4b",)}


def shipped(name: str, size: str, monkeypatch) -> TrainConfig:
    monkeypatch.setenv("BARD_SIZE", size)
    cfg = recipe_lib.load_recipe(os.path.join(REPO, "recipes", f"{name}.py"))
    check_train_config(cfg)
    return cfg


# ------------------------------------------------------------------------------------------------ the mesh
def test_the_default_mesh_puts_every_device_on_fsdp_and_a_micro_batch_of_minus_one_is_one_per_shard():
    cfg = TrainConfig()
    assert cfg.mesh == MeshSection(data=1, fsdp=-1, tensor=1)
    assert dict(run_mesh(cfg).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert dict(run_mesh(cfg, jax.devices()[:2]).shape) == {"data": 1, "fsdp": 2, "tensor": 1}
    per_shard = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, global_batch_size=32,
                                                                  micro_batch_size=-1))
    assert resolve_for_mesh(per_shard, run_mesh(cfg)).data.micro_batch_size == 8
    two = dataclasses.replace(per_shard, mesh=MeshSection(data=2, fsdp=-1, tensor=2))
    assert resolve_for_mesh(two, run_mesh(two)).data.micro_batch_size == 4  # data 2 x fsdp 2 batch shards


@pytest.mark.parametrize("mesh, data, heads, message", [
    ((3, -1, 1), {}, None, "mesh.data x mesh.fsdp x mesh.tensor = 3 x -1 x 1 does not fit the 8 devices: the "
                           "sizes need a product that divides 8"),
    ((2, 2, 1), {}, None, "mesh.data x mesh.fsdp x mesh.tensor = 2 x 2 x 1 does not fit the 8 devices: the sizes "
                          "need a product equal to 8"),
    ((1, -1, 1), {"micro_batch_size": 4}, None,
     "data.micro_batch_size 4 is not a multiple of the mesh's batch shards (data 1 x fsdp 8 = 8)"),
    ((1, -1, 1), {"global_batch_size": 12, "micro_batch_size": -1}, None,
     "data.global_batch_size 12 is not a multiple of data.micro_batch_size (-1 = 8, one example per batch shard)"),
    ((1, -1, 4), {"micro_batch_size": 2}, {"text query heads": 16, "text key/value heads": 2},
     "mesh.tensor 4 does not divide the text key/value heads (2): attention is split over the tensor axis by whole "
     "heads; use mesh.tensor in [1, 2]"),
])
def test_a_mesh_that_cannot_split_the_work_is_one_error_naming_the_key(mesh, data, heads, message):
    cfg = TrainConfig(mesh=MeshSection(*mesh))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data))
    with pytest.raises(InputError) as e:
        resolve_for_mesh(cfg, run_mesh(cfg), heads)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_two_minus_ones_in_the_mesh_are_refused_by_key():
    with pytest.raises(recipe_lib.RecipeError, match=r"mesh.data, mesh.fsdp, mesh.tensor = \(-1, -1, 1\): at most "
                                                     r"one may be -1"):
        check_train_config(TrainConfig(mesh=MeshSection(-1, -1, 1)))


# ------------------------------------------------------------------------------------------------ shipped recipes
@pytest.mark.parametrize("name, size", [(n, s) for n, sizes in RELEASED.items() for s in sizes])
def test_every_shipped_recipe_shards_its_state_and_batch_over_all_devices(name, size, monkeypatch):
    """As shipped, on 8 devices: the mesh is 1 x 8 x 1, one example per device per micro-batch, and the
    parameters, optimizer moments and teacher are sharded over fsdp (planned with one-layer models: the shapes of
    the release's are the benchmark's, benchmarks/bench_plans.py)."""
    cfg = shipped(name, size, monkeypatch)
    mesh = run_mesh(cfg)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    small = one_layer()
    teacher = small if cfg.objective.kind == "swd" else None
    cfg = resolve_for_mesh(cfg, mesh, setup.head_counts(small, teacher))
    assert cfg.data.micro_batch_size == 8 and cfg.data.global_batch_size == 256
    obj = setup.objective_config(cfg, small.text.vocab_size, 5, 6, setup.vision_ids(small))
    plan = setup.plan_step(cfg, small, teacher, obj, mesh)
    assert plan.accum == 32

    def fsdp_sharded(params, shardings):
        """Whether each weight matrix (kernels, embedding tables) is sharded over fsdp (norms and biases may not
        be)."""
        weights = [(jax.tree_util.keystr(p), s) for (p, x), s in zip(jax.tree_util.tree_leaves_with_path(params),
                                                                    jax.tree_util.tree_leaves(shardings))
                   if jax.tree_util.keystr(p).endswith(("['kernel']", "['embedding']"))]
        assert len(weights) >= 15
        return {k: "fsdp" in str(s.spec) for k, s in weights}

    assert all(fsdp_sharded(plan.params, plan.param_shardings).values())
    assert all(fsdp_sharded(plan.state.opt_state, plan.state_shardings.opt_state).values())
    if teacher is not None:
        assert all(fsdp_sharded(plan.teacher, plan.teacher_shardings).values())
    for key in plan.batch:  # every batch leaf split over the batch axes (data x fsdp)
        assert "fsdp" in str(plan.batch_sharding(key).spec)
    # The largest batch's pixel rows come from the recipe's max_pixels: four images of at most max_pixels each,
    # no more windows than the longest sample holds (8192 tokens).
    windows = min(4 * cfg.data.max_pixels // 32**2, 8192)
    assert plan.batch["pixel_values"].shape[:2] == (256, 4 * windows)


# ------------------------------------------------------------------------------------------------ the search
def fake_planner(needs):
    """plan_memory stand-in: a complete plan whose total is `needs(mesh, micro, remat)` GiB, `mesh` the resolved
    (data, fsdp, tensor) shape."""
    calls = []

    def plan(cfg, mesh, talk=None, budget=None):
        micro = resolve_for_mesh(cfg, mesh).data.micro_batch_size
        key = (tuple(mesh.shape[a] for a in ("data", "fsdp", "tensor")), micro, cfg.model.remat_policy)
        calls.append(key)
        total = int(needs(*key) * GiB)
        return MemoryPlan(name=cfg.name, header=("plan",), parts={"temporaries": total}, arguments=0,
                          temporaries=total, outputs=0, aliased=0)

    return plan, calls


def demo_as(mesh=(8, 1, 1), micro=16, remat="none") -> TrainConfig:
    cfg = recipe_lib.load_recipe(DEMO)
    return dataclasses.replace(cfg, mesh=MeshSection(*mesh),
                               data=dataclasses.replace(cfg.data, global_batch_size=32, micro_batch_size=micro),
                               model=dataclasses.replace(cfg.model, remat_policy=remat))


def test_candidates_go_from_cheapest_in_speed_to_least_memory():
    ladders = list(settings(demo_as(), 8, heads=[16, 8, 16]))
    shapes = [(lad[0].mesh.shape(), lad[0].data.micro_batch_size) for lad in ladders]
    assert shapes == [((1, -1, 1), 16), ((1, -1, 1), -1), ((1, -1, 2), 16), ((1, -1, 2), -1), ((1, -1, 4), 16),
                      ((1, -1, 4), -1), ((1, -1, 8), 16), ((1, -1, 8), -1)]
    assert [c.model.remat_policy for c in ladders[0]] == list(fit_search.REMAT_BY_MEMORY)
    # Tensor sizes divide every head count; a recipe already at `full` has a one-rung ladder.
    assert {lad[0].mesh.tensor for lad in settings(demo_as(remat="full"), 8, heads=[16, 2])} == {1, 2}
    assert all(len(lad) == 1 for lad in settings(demo_as(remat="full"), 8, heads=[2]))


def test_the_search_probes_each_ladder_with_full_remat_then_takes_the_lightest_that_fits(monkeypatch):
    # Memory falls with remat and with fewer examples per device; only tensor 2 with one example per shard fits
    # under `dots` or heavier.
    weight = {"none": 5, "dots_saveable": 4, "dots": 3, "projections": 2, "full": 1}

    def needs(mesh, micro, remat):
        return 100 - 40 * (mesh[2] == 2) - 30 * (micro == 4) + weight[remat]

    plan, calls = fake_planner(needs)
    monkeypatch.setattr(fit_search, "plan_memory", plan)
    written = demo_as()
    result = fit_search.search(written, jax.devices(), int(33.5 * GiB), [16, 8], Talk(lambda line: None),
                               skip=written)
    # Probes (full) of the fsdp ladders, then tensor 2 with micro 16, then tensor 2 with one per shard: fits, so
    # the lighter policies are tried from the recipe's until one fits.
    fsdp8, tensor2 = (1, 8, 1), (1, 4, 2)
    assert calls == [(fsdp8, 16, "full"), (fsdp8, 8, "full"), (tensor2, 16, "full"), (tensor2, 4, "full"),
                     (tensor2, 4, "none"), (tensor2, 4, "dots_saveable"), (tensor2, 4, "dots")]
    assert result.found is not None and result.found.needs == 33 * GiB
    assert overrides(written, result.found.cfg) == ("--recipe.mesh.data=1 --recipe.mesh.fsdp=-1 "
                                                    "--recipe.mesh.tensor=2 --recipe.data.micro_batch_size=-1 "
                                                    "--recipe.model.remat_policy=dots")
    # At most `limit` compilations: here two probes, then no fit.
    calls.clear()
    result = fit_search.search(written, jax.devices(), int(33.5 * GiB), [16, 8], Talk(lambda line: None), limit=2)
    assert len(calls) == 2 and result.found is None


def test_a_recipe_that_fits_nowhere_is_one_error_naming_the_smallest_setting_tried(monkeypatch, capsys):
    plan, calls = fake_planner(lambda mesh, micro, remat: 50 + 10 * mesh[2] + (remat == "none"))
    monkeypatch.setattr(fit_search, "plan_memory", plan)
    monkeypatch.setattr(dry_run, "plan_memory", plan)
    monkeypatch.setattr(setup, "planned_config", lambda path, fallback: preset("tiny"))
    written = demo_as()
    with pytest.raises(dry_run.DoesNotFitError) as e:
        dry_run.run(written, run_mesh(written), "40GiB", talk=Talk(lambda line: None))
    # The recipe itself, then one probe per ladder (the tiny preset's heads allow tensor 1 and 2; two micro-batches).
    assert len(calls) == 1 + 4
    message = str(e.value)
    assert message.startswith("demo does NOT fit in 40.00 GiB per device (--device-memory 40GiB): it needs 61.00 "
                              "GiB; largest parts: temporaries 61.00 GiB; none of the 4 other settings tried fits on "
                              "8 devices (the smallest: --recipe.mesh.data=1 --recipe.mesh.fsdp=-1 "
                              "--recipe.model.remat_policy=full: needs 60.00 GiB): use more devices")
    assert "data.length_buckets" in message and "\n" not in message
    assert capsys.readouterr().out.count("  tried --recipe.mesh.data=1") == 4


def test_a_recipe_that_fits_on_another_mesh_is_refused_with_the_overrides_that_fit(monkeypatch):
    # Data parallel (8 x 1 x 1) replicates the state: 90 GiB; every device on fsdp: 30 GiB, whatever the remat.
    plan, calls = fake_planner(lambda mesh, micro, remat: 90 if mesh[0] == 8 else 30)
    monkeypatch.setattr(fit_search, "plan_memory", plan)
    monkeypatch.setattr(dry_run, "plan_memory", plan)
    monkeypatch.setattr(setup, "planned_config", lambda path, fallback: preset("tiny"))
    written = demo_as()
    with pytest.raises(dry_run.DoesNotFitError, match=r"it needs 90.00 GiB; largest parts: temporaries 90.00 GiB; it "
                                                      r"fits with --recipe.mesh.data=1 --recipe.mesh.fsdp=-1 "
                                                      r"\(needs 30.00 GiB\)$"):
        dry_run.run(written, run_mesh(written), "80GiB", talk=Talk(lambda line: None))
    assert calls == [((8, 1, 1), 16, "none"), ((1, 8, 1), 16, "full"), ((1, 8, 1), 16, "none")]


# ------------------------------------------------------------------------------------------------ the dry run
def test_the_dry_run_announces_each_phase_with_its_time_and_reports_flops(capsys, monkeypatch):
    monkeypatch.setattr(setup, "planned_config", lambda path, fallback: one_layer())  # less to compile
    status = cli.run(main, "python -m bard_jax.train", [
        "--recipe", DEMO, "--dry-run", "--recipe.data.global_batch_size", "8", "--recipe.data.length_buckets", "64",
        "--recipe.data.response_buckets", "16", "--device-memory", "1GiB"])
    out = capsys.readouterr().out
    assert status == 0, out
    phases = [line for line in out.splitlines() if line.startswith("[dry run")]
    assert [p.split("] ")[1].split(" (")[0].split(" for ")[0] for p in phases] == [
        "building the abstract state", "tracing and lowering the train step", "compiling the train step",
        "analysing the compiled step"]
    seconds = [float(p.split("]")[0].split()[-2]) for p in phases]
    assert seconds == sorted(seconds)
    assert "dry run of demo: mesh {'data': 1, 'fsdp': 8, 'tensor': 1} (8 devices, cpu)" in out
    assert "model FLOPs per update: " in out and "verdict: fits in 1.00 GiB per device" in out


def test_memory_plan_module_reports_sizes_readably():
    assert memory_plan.size(3 * GiB) == "3.00 GiB" and memory_plan.size(5 * 2**20) == "5.00 MiB"


# ------------------------------------------------------------------------------------------------ model FLOPs
def dot_flops(jaxpr) -> int:
    """2 x multiply-adds of every dot_general a jaxpr runs, a scan's body counted `length` times (XLA's own cost
    analysis counts a loop body once)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs[i] for i in contract]))
            continue
        assert eqn.primitive.name != "while", "a loop of unknown trip count"
        times = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += times * dot_flops(inner)
    return total


@pytest.mark.parametrize("kind", ["pbm", "swd"])
def test_model_flops_count_every_matmul_of_the_forward(kind):
    """`step_flops` / `forward_flops` against the matmuls the objective's own forward traces (dense attention, every
    query against every key, no remat): equal. Two layers and two vision blocks with a deepstack tap, images."""
    from bard_jax.train.config import DataSection, ModelSection, ObjectiveSection
    from bard_jax.train.flops import forward_flops, step_flops

    c = preset("tiny")
    c = c.replace(text=dataclasses.replace(c.text, num_hidden_layers=2),
                  vision=dataclasses.replace(c.vision, depth=2, deepstack_visual_indexes=(0,)))
    teacher = c.replace(text=dataclasses.replace(c.text, num_hidden_layers=3)) if kind == "swd" else None
    cfg = TrainConfig(model=ModelSection(preset="tiny", attention="dense", compute_dtype="float32"),
                      data=DataSection(global_batch_size=2, micro_batch_size=2, length_buckets=(96,),
                                       response_buckets=(32,), max_images=1, max_videos=0, max_pixels=64 * 64),
                      objective=ObjectiveSection(kind=kind, block_size=8, teacher_block_size=4))
    obj = setup.objective_config(cfg, c.text.vocab_size, 5, 6)
    batch = setup.largest_batch(cfg, obj, c.vision.patch_dim)
    tokens, slots, rows = batch["input_ids"].shape[1], batch["noisy_index"].shape[1], batch["pixel_values"].shape[1]
    assert (tokens, slots, rows) == (96, 32, 16)
    params = setup.abstract_params(cfg, c)
    teacher_params = setup.abstract_params(cfg, teacher) if teacher is not None else None
    loss = setup.make_loss(cfg, c, teacher, obj)
    traced = dot_flops(jax.make_jaxpr(lambda p, t, b: loss(p, b, t, 2))(params, teacher_params, batch).jaxpr)
    forward = forward_flops(c, tokens, slots, rows).total
    frozen = forward_flops(teacher, tokens, slots, rows).total if teacher is not None else 0
    assert traced == 2 * (forward + frozen)
    assert step_flops(c, teacher, samples=2, tokens=tokens, slots=slots, pixel_rows=rows) == 2 * (3 * forward + frozen)
