"""`python -m bard_jax.train --recipe recipes/NAME.py [--workdir DIR] [--dry-run] [--recipe.KEY=VALUE ...]`.

One readable `main()` in sections: config, distributed init, mesh, data, model and state (init or restore),
compile, loop (log, checkpoint, stop on signal or non-finite loss), export.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from bard_jax import cli
from bard_jax.data.pipeline import StopRequested
from bard_jax.errors import BardError
from bard_jax.sharding import make_mesh, param_shardings, replicated
from bard_jax.train import recipe as recipe_lib
from bard_jax.train.checkpoint import Checkpointer, abstract_like
from bard_jax.train.config import TrainConfig, check_train_config
from bard_jax.train.metrics import MetricsWriter
from bard_jax.train.optimizer import make_optimizer, trainable_mask
from bard_jax.train.signals import StopFlag
from bard_jax.train.step import TrainState, init_state, make_train_step


class TrainingError(BardError, RuntimeError):
    """A run that cannot start or must stop (bad setup, non-finite loss)."""


# ------------------------------------------------------------------------------------------------ command line
def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    parser = argparse.ArgumentParser(prog="python -m bard_jax.train", description=__doc__)
    parser.add_argument("--recipe", required=True, help="recipe file (recipes/NAME.py)")
    parser.add_argument("--workdir", default=None, help="output directory (default: the recipe's, or runs/NAME)")
    parser.add_argument("--dry-run", action="store_true", help="plan shapes, shardings and memory; read no weights")
    parser.add_argument("--coordinator", default=None, help="multi-host: coordinator address host:port")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    parser.add_argument(cli.DEBUG_FLAG, action="store_true", help=cli.DEBUG_HELP)
    args, rest = parser.parse_known_args(argv)
    return args, recipe_lib.parse_override_args(rest)


def load_config(args: argparse.Namespace, overrides: dict[str, str]) -> TrainConfig:
    cfg = recipe_lib.load_recipe(args.recipe)
    if not isinstance(cfg, TrainConfig):
        raise recipe_lib.RecipeError(f"{args.recipe}: get_config() must return a TrainConfig")
    cfg = recipe_lib.apply_overrides(cfg, overrides)
    check_train_config(cfg)
    workdir = args.workdir or cfg.workdir or os.path.join("runs", cfg.name)
    return dataclasses.replace(cfg, workdir=os.path.abspath(workdir))


def check_workdir_writable(workdir: str) -> None:
    """Fail now, not after data generation and weight loading, if the workdir cannot be written: it must be a
    writable directory, or not exist yet under a writable one. Nothing is created here (a run refused later, for a
    bad setting, leaves nothing behind)."""
    existing = workdir
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    problem = None
    if not os.path.isdir(existing):
        problem = f"{existing} is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    if problem:
        raise TrainingError(f"workdir {workdir} cannot be written: {problem}")


def maybe_init_distributed(args: argparse.Namespace) -> None:
    """jax.distributed from flags, or from the environment (JAX_COORDINATOR_ADDRESS etc.)."""
    if args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        # CPU collectives across processes (only affects the CPU backend; must precede backend start-up).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator or os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=args.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "1")),
            process_id=args.process_id if args.process_id is not None else int(os.environ.get("JAX_PROCESS_ID", "0")),
        )


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(args, overrides)
    maybe_init_distributed(args)
    mesh = make_mesh(cfg.mesh.shape())
    check_batch_fits_mesh(cfg, mesh)

    from bard_jax.train import setup  # the pieces that touch data, weights and objectives

    if args.dry_run:
        from bard_jax.train.dry_run import dry_run

        print(dry_run(cfg, mesh))
        return cli.EXIT_OK

    # --- data, model config, objective
    if jax.process_index() == 0:
        check_workdir_writable(cfg.workdir)
    stop = StopFlag()  # its handlers are installed when the loop starts; the data stream already watches it
    run = setup.prepare_run(cfg, stop_event=stop.event)  # checks paths and compatibility; builds the data stream
    model_config = run.model_config
    accum = cfg.data.global_batch_size // cfg.data.micro_batch_size

    # --- state: restore, or init (already sharded)
    os.makedirs(cfg.workdir, exist_ok=True)
    ckpt = Checkpointer(os.path.join(cfg.workdir, "checkpoints"), keep=cfg.keep_checkpoints)
    fingerprint = setup.fingerprint(cfg, model_config)
    params_abstract = setup.abstract_params(cfg, model_config)
    p_shard = param_shardings(params_abstract, mesh)
    tx, schedules = make_optimizer(cfg.optim, cfg.steps, params_abstract)
    state_abstract = jax.eval_shape(lambda p: init_state(p, tx, cfg.seed), params_abstract)
    state_shard = state_shardings(state_abstract, p_shard, mesh)

    restored = ckpt.restore_latest(abstract_like(state_abstract, state_shard), fingerprint)
    if restored is not None:
        state, meta = restored
        run.data.set_state(meta["data_state"])
        start_step = int(meta["step"])
    else:
        params = setup.initial_params(cfg, model_config, mesh)
        state = jax.jit(lambda p: init_state(p, tx, cfg.seed), out_shardings=state_shard)(params)
        del params
        start_step = 0
    teacher = setup.teacher_params(cfg, model_config, mesh)

    # --- compile
    step_fn = make_train_step(run.loss_fn, tx, schedules, global_batch_size=cfg.data.global_batch_size,
                              trainable=trainable_mask(cfg.optim, params_abstract))
    teacher_shard = None if teacher is None else param_shardings(teacher, mesh)
    train_step = None  # compiled on the first batch, once its keys are known

    # --- loop
    writer = MetricsWriter(cfg.workdir, cfg.steps, start_step)
    stop.install()
    writer.message(
        f"[bard_jax.train] {cfg.name}: objective={cfg.objective.kind} b={cfg.objective.block_size} "
        f"steps {start_step}->{cfg.steps} mesh={dict(mesh.shape)} workdir={cfg.workdir}"
    )
    step = start_step
    last_saved = start_step if restored is not None else None
    try:
        while step < cfg.steps:
            try:
                host_batch = run.data.next_batch()
            except StopRequested:
                # Asked to stop while the next batch was still being prepared (e.g. the stream was searching for
                # usable samples). Save what was trained since the last checkpoint; in a multi-process run the
                # others may be inside a collective, so the last checkpoint stands instead.
                if step != last_saved and step > 0 and jax.process_count() == 1:
                    save(ckpt, step, state, run, fingerprint)
                    last_saved = step
                kept = (f"saved step {step}" if last_saved == step else "no checkpoint saved yet" if last_saved is None
                        else f"the last checkpoint is step {last_saved}")
                writer.message(f"[bard_jax.train] {stop.signal_name or 'stop requested'} while waiting for data: "
                               f"{kept}, exiting with status {cli.EXIT_STOPPED}; re-run to resume")
                return cli.EXIT_STOPPED
            batch, batch_shard = device_batch(host_batch, accum, mesh)
            if train_step is None:
                train_step = jax.jit(
                    step_fn,
                    in_shardings=(state_shard, batch_shard, teacher_shard),
                    out_shardings=(state_shard, replicated(mesh)),
                    donate_argnums=(0,),
                )
            t0 = time.time()
            state, metrics = train_step(state, batch, teacher)
            metrics = jax.device_get(metrics)
            if not bool(metrics["finite"]):
                ids = np.asarray(host_batch.get("example_index", [])).tolist()
                kept = (f"the last good checkpoint ({last_saved}) is kept in {ckpt.directory}" if last_saved is not None
                        else f"no checkpoint had been saved yet in {ckpt.directory}")
                raise TrainingError(
                    f"non-finite loss at step {step + 1} (loss={float(metrics['loss'])}, "
                    f"grad_norm={float(metrics['grad_norm'])}) on examples {ids}; the update was not applied and "
                    f"{kept}"
                )
            step += 1
            metrics["step_seconds"] = time.time() - t0
            if step % cfg.log_every == 0 or step == cfg.steps:
                writer.write(step, {k: v for k, v in metrics.items() if k != "finite"})
            writer.advance()
            if cfg.stop_at_step and step >= cfg.stop_at_step and step < cfg.steps:
                stop.signal_name = f"stop_at_step={cfg.stop_at_step}"
                stop.request()
            # Read the flag once per step: a signal that lands between this read and the save is acted on after
            # the next step. Reading it twice let one process save (a collective) while another went on training.
            stopping = stop.stop
            if jax.process_count() > 1:
                # A signal reaches the processes at different times: all agree to stop after the same step.
                agreed = any_process(stopping)
                if agreed and not stopping:
                    stop.signal_name = "stop requested by another process"
                stopping = agreed
            if step % cfg.ckpt_every == 0 or step == cfg.steps or stopping:
                save(ckpt, step, state, run, fingerprint)
                last_saved = step
            if stopping:
                writer.message(f"[bard_jax.train] {stop.signal_name}: saved step {step}, exiting with status "
                               f"{cli.EXIT_STOPPED} (not finished, no export); re-run to resume")
                return cli.EXIT_STOPPED
    finally:
        stop.restore()
        writer.close()
        run.data.close()  # the prefetch thread and any worker processes

    # --- export
    setup.export(cfg, model_config, state.params, run)
    ckpt.close()
    return cli.EXIT_OK


def check_batch_fits_mesh(cfg: TrainConfig, mesh) -> None:
    """Each micro-batch is split over the (data, fsdp) mesh axes: say so before any array is placed."""
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if cfg.data.micro_batch_size % ways:
        raise TrainingError(
            f"data.micro_batch_size {cfg.data.micro_batch_size} is not a multiple of the mesh's batch shards "
            f"(data {mesh.shape['data']} x fsdp {mesh.shape['fsdp']} = {ways}): each micro-batch is split over "
            f"them; set data.micro_batch_size to a multiple of {ways}"
        )


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any (a collective: all processes must call it)."""
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.bool_))))


def save(ckpt: Checkpointer, step: int, state: TrainState, run: Any, fingerprint: dict[str, Any]) -> None:
    meta = {"step": step, "data_state": run.data.get_state(), "fingerprint": fingerprint}
    ckpt.save(step, state, json.loads(json.dumps(meta)))


def state_shardings(state_abstract: TrainState, p_shard: Any, mesh) -> TrainState:
    """Params by the rules; optimizer moments like their params; scalars replicated."""
    rep = replicated(mesh)

    def opt_leaf(path, x):
        # optax states hold param-shaped moments under the same tree paths as the params (after the group prefix).
        sub = _match_param_sharding(path, x, state_abstract.params, p_shard)
        return sub if sub is not None else rep

    opt_shard = jax.tree_util.tree_map_with_path(opt_leaf, state_abstract.opt_state)
    return TrainState(step=rep, params=p_shard, opt_state=opt_shard, rng=rep)


def _match_param_sharding(path, x, params, p_shard):
    """The sharding of the param whose path is a suffix of this optimizer-state leaf's path (and same shape)."""
    keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path]
    node, snode = params, p_shard
    for start in range(len(keys)):
        node, snode = params, p_shard
        ok = True
        for k in keys[start:]:
            if isinstance(node, dict) and k in node:
                node, snode = node[k], snode[k]
            else:
                ok = False
                break
        if ok and hasattr(node, "shape") and tuple(node.shape) == tuple(x.shape):
            return snode
    return None


def device_batch(host_batch: dict[str, np.ndarray], accum: int, mesh) -> tuple[dict, dict]:
    """[B, ...] host arrays -> [A, B/A, ...] global arrays (A micro-batches), the example axis sharded over
    (data, fsdp). `positions` [3, B, L] becomes [A, 3, B/A, L]."""
    out, shardings = {}, {}
    for k, v in host_batch.items():
        v = np.asarray(v)
        if k == "positions":
            v = v.reshape((3, accum, v.shape[1] // accum) + v.shape[2:]).swapaxes(0, 1)
            spec = PartitionSpec(None, None, ("data", "fsdp"))
        else:
            v = v.reshape((accum, v.shape[0] // accum) + v.shape[1:])
            spec = PartitionSpec(None, ("data", "fsdp"))
        out[k] = v
        shardings[k] = NamedSharding(mesh, spec)
    if jax.process_count() > 1:  # each host holds its own slice of the global batch
        return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in out.items()}, shardings
    return {k: jax.device_put(v, shardings[k]) for k, v in out.items()}, shardings


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m bard_jax.train"))
