"""`python -m bard_jax.train --recipe recipes/NAME.py [--workdir DIR] [--dry-run] [--recipe.KEY=VALUE ...]`.

One readable `main()` in sections: config, distributed init, mesh, data, the step plan (`setup.plan_step`, shared
with the dry run), state (init or restore), loop (check, log, checkpoint, stop on signal or non-finite loss), export.

The loop never waits for the device on a step it has just dispatched: the metrics stay device arrays until a check
(log interval, save, end) fetches them all, the NaN guard is applied on the device (`step.py`), and checkpoints are
written in the background (`checkpoint.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

import jax
import numpy as np

from bard_jax import cli
from bard_jax.data.pipeline import StopRequested
from bard_jax.errors import InputError, TrainingError
from bard_jax.train import recipe as recipe_lib
from bard_jax.train.checkpoint import Checkpointer, abstract_like
from bard_jax.train.config import TrainConfig, check_train_config
from bard_jax.train.mesh import resolve_for_mesh, run_mesh
from bard_jax.train.metrics import MetricsWriter, NonFiniteStep, PendingSteps
from bard_jax.train.signals import StopFlag
from bard_jax.train.step import TrainState, init_state
from bard_jax.train.workdir import WorkdirLock, check_fresh_start, check_workdir_writable


# ------------------------------------------------------------------------------------------------ command line
def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    parser = argparse.ArgumentParser(prog="python -m bard_jax.train", description=__doc__)
    parser.add_argument("--recipe", required=True, help="recipe file (recipes/NAME.py)")
    parser.add_argument("--workdir", default=None, help="output directory (default: the recipe's, or runs/NAME)")
    parser.add_argument("--dry-run", action="store_true", help="plan shapes, shardings and memory; read no weights")
    parser.add_argument("--device-memory", default=None, metavar="SIZE",
                        help="with --dry-run: the memory of one device to plan against (80GB, 80GiB, 96e9 bytes); "
                             "default: the detected accelerator's, none on CPU")
    parser.add_argument("--coordinator", default=None, help="multi-host: coordinator address host:port")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    parser.add_argument("--coordinator-timeout", type=int, default=300, metavar="SECONDS",
                        help="how long the processes wait for each other at start-up (default 300)")
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


def maybe_init_distributed(args: argparse.Namespace) -> None:
    """jax.distributed from flags, or from the environment (JAX_COORDINATOR_ADDRESS etc.)."""
    coordinator = args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    given = [flag for flag, value in (("--num-processes", args.num_processes), ("--process-id", args.process_id))
             if value is not None]
    if given and not coordinator:
        # Without one, each process would train alone on the same workdir.
        raise InputError(f"{' and '.join(given)} need --coordinator HOST:PORT (or JAX_COORDINATOR_ADDRESS): the "
                         "processes of one run find each other through it")
    if coordinator and ":" not in coordinator.rsplit("]", 1)[-1]:
        raise InputError(f"--coordinator {coordinator!r} has no port: pass HOST:PORT (e.g. {coordinator}:12345)")
    if coordinator:
        # CPU collectives across processes (only affects the CPU backend; must precede backend start-up).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        processes = args.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "1"))
        process_id = args.process_id if args.process_id is not None else int(os.environ.get("JAX_PROCESS_ID", "0"))
        # Said before the wait, which is silent otherwise: a wrong address or a process that never starts looks
        # like a hang for the whole timeout.
        print(f"[bard_jax.train] process {process_id} of {processes}: joining the run at {coordinator} (waiting up "
              f"to {args.coordinator_timeout} s for every process)", file=sys.stderr, flush=True)
        if process_id != 0:
            # XLA aborts the process when the coordinator cannot be reached, blaming "another task": reach it first.
            wait_for_coordinator(coordinator, args.coordinator_timeout, f"process {process_id} of {processes}")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=processes, process_id=process_id,
                                   initialization_timeout=args.coordinator_timeout)


def wait_for_coordinator(address: str, timeout_s: float, who: str) -> None:
    """Return once something accepts TCP connections at `address` (HOST:PORT), or raise TrainingError after
    `timeout_s` seconds naming the address."""
    import socket
    import time

    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise TrainingError(f"{who} could not reach the coordinator at {address} within {timeout_s:g} s "
                                    f"({e.strerror or e}): check the address, and that process 0 was started with "
                                    "the same --coordinator") from None
            time.sleep(0.5)


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(args, overrides)
    if args.device_memory is not None:
        if not args.dry_run:
            raise InputError("--device-memory plans a --dry-run; a training run uses the devices it has")
        from bard_jax.train.dry_run import parse_bytes

        parse_bytes(args.device_memory, "--device-memory")  # a typo is refused before anything else happens
    maybe_init_distributed(args)
    mesh = run_mesh(cfg)

    if args.dry_run:  # planned as written: a micro-batch of -1 is resolved for each mesh the dry run tries
        from bard_jax.train import dry_run as dry_run_lib

        return dry_run_lib.run(cfg, mesh, args.device_memory)  # a plan that does not fit raises (exit status 1)
    cfg = resolve_for_mesh(cfg, mesh)

    # --- the workdir: this run's alone from here on (a second launch is refused now, not after its data work)
    if jax.process_index() == 0:
        check_workdir_writable(cfg.workdir)
    lock = WorkdirLock.take(cfg.workdir) if jax.process_index() == 0 else None
    try:
        return _run(cfg, mesh)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: TrainConfig, mesh) -> int:
    """Data, plan, restore or initialise, train, export."""
    from bard_jax.train import setup  # the pieces that touch data, weights and objectives

    # --- data, model config, objective
    stop = StopFlag()  # its handlers are installed when the loop starts
    # One process alone may give up waiting for data on a stop request; in a multi-process run the others would
    # then wait for it in the next step's collectives forever, so there the request waits for the agreement below.
    run = setup.prepare_run(cfg, stop_event=stop.event if jax.process_count() == 1 else None)
    try:
        model_config = run.model_config
        resolve_for_mesh(cfg, mesh, setup.head_counts(model_config, run.teacher_config))

        # --- the step plan: shapes, shardings, batch schema, the step (the dry run builds the same)
        plan = setup.plan_step(cfg, model_config, run.teacher_config, run.objective, mesh, run.pixel_rows)
        return _train(cfg, mesh, run, model_config, plan, stop)
    finally:
        run.data.close()  # the prefetch thread and any worker processes, on every way out (closing twice is fine)


def _train(cfg: TrainConfig, mesh, run, model_config, plan, stop: StopFlag) -> int:
    """Restore or initialise, train, export."""
    from bard_jax.train import setup

    setup.check_export_dirs(cfg)
    ckpt = Checkpointer(os.path.join(cfg.workdir, "checkpoints"), keep=cfg.keep_checkpoints)
    fingerprint = setup.fingerprint(cfg, model_config)
    restored = ckpt.restore_latest(abstract_like(plan.state, plan.state_shardings), fingerprint)
    if restored is not None:
        state, meta = restored
        start_step = int(meta["step"])
        if start_step > cfg.steps:
            raise TrainingError(f"the newest checkpoint in {ckpt.directory} is at step {start_step}, past steps="
                                f"{cfg.steps}: exporting it would present {start_step} steps of training as "
                                f"{cfg.steps}; set --recipe.steps={start_step} (or more) to finish from it, or use "
                                "another --workdir")
        run.data.set_state(meta["data_state"])
    else:
        check_fresh_start(cfg.workdir)
        params = setup.initial_params(cfg, model_config, mesh)
        state = jax.jit(lambda p: init_state(p, plan.tx, cfg.seed), out_shardings=plan.state_shardings)(params)
        del params
        start_step = 0
    teacher = setup.teacher_params(cfg, model_config, mesh)
    setup.check_matches(teacher, plan.teacher, "the teacher")

    # --- loop
    writer = MetricsWriter(cfg.workdir, cfg.steps, start_step)
    stop.install()
    writer.message(
        f"[bard_jax.train] {cfg.name}: objective={cfg.objective.kind} b={cfg.objective.block_size} "
        f"steps {start_step}->{cfg.steps} mesh={dict(mesh.shape)} workdir={cfg.workdir}"
    )
    loop = Loop(cfg, plan, ckpt, run, fingerprint, writer, stop, state, teacher, start_step,
                last_saved=start_step if restored is not None else None)
    try:
        status = loop.run()
    finally:
        stop.restore()
        writer.close()
        run.data.close()  # the prefetch thread and any worker processes
        ckpt.close()  # finishes the save in progress on every way out: a checkpoint begun is never lost
    if status != cli.EXIT_OK:
        return status

    # --- export
    setup.export(cfg, model_config, loop.state.params, run)
    if jax.process_index() == 0:
        export = os.path.join(cfg.workdir, "export")
        hf_copy = f" and an HF copy in {os.path.join(cfg.workdir, 'export_hf')}" if cfg.export_hf else ""
        print(f"[bard_jax.train] {cfg.name}: finished at step {cfg.steps}; the model is in {export}{hf_copy} "
              f"(decode: python -m bard_jax.generate --model {export} --prompt ...; next stage: model.init_from)",
              flush=True)
    return cli.EXIT_OK


@dataclasses.dataclass
class Loop:
    """The training loop's state between steps; `run()` trains to the end or to a stop and returns the exit status.

    Per step the host dispatches the compiled step and moves on; it synchronises with the device only in `check()`
    (log intervals, saves, the end) and, in a multi-process run, to read the processes' agreed stop vote every
    `stop_check_every` steps.
    """

    cfg: TrainConfig
    plan: Any  # setup.StepPlan
    ckpt: Checkpointer
    job: Any  # setup.Run: the data stream and the configs
    fingerprint: dict[str, Any]
    writer: MetricsWriter
    stop: StopFlag
    state: TrainState
    teacher: Any
    step: int
    last_saved: int | None

    def run(self) -> int:
        cfg, plan = self.cfg, self.plan
        pending = PendingSteps(self.writer, cfg.log_every, cfg.steps)
        healthy = None  # the previous step's metrics["applied"], fed back on the device (step.py's sticky guard)
        previous_vote = None  # the previous step's agreed stop vote, still on the device
        while self.step < cfg.steps:
            try:
                host_batch = self.job.data.next_batch()
            except StopRequested:  # (one process only: see `prepare_run` in main)
                return self.stop_while_waiting(pending)
            batch = plan.device_batch(host_batch)
            control = plan.control(healthy, self.stop.stop)
            self.state, metrics = plan.step_for(host_batch)(self.state, batch, self.teacher, control)
            healthy = metrics["applied"]
            self.step += 1
            pending.add(self.step, metrics, host_batch.get("example_index"))
            self.writer.advance()
            stopping = self.stopping(previous_vote)
            previous_vote = metrics["stop"]
            saving = self.step % cfg.ckpt_every == 0 or self.step == cfg.steps or stopping
            if saving or self.step % cfg.log_every == 0:
                self.check(pending)
            if saving:
                self.save()
            if stopping:
                self.writer.message(f"[bard_jax.train] {self.stop.signal_name}: saved step {self.step}, exiting with "
                                    f"status {cli.EXIT_STOPPED} (not finished, no export); re-run to resume")
                return cli.EXIT_STOPPED
        return cli.EXIT_OK

    def stopping(self, previous_vote: Any) -> bool:
        """Whether every process stops after the step just dispatched (the same answer on all of them)."""
        cfg = self.cfg
        if cfg.stop_at_step and cfg.stop_at_step <= self.step < cfg.steps:
            self.stop.signal_name = f"stop_at_step={cfg.stop_at_step}"
            return True
        if jax.process_count() == 1:
            return self.stop.stop  # the flag is this process's own: nothing to agree on, nothing to wait for
        # Several processes: a signal reaches them at different times, so each step carries every process's request
        # as its devices' votes, and all stop after the step at which they read a vote. Reading is a host
        # synchronisation, unavoidable for a decision the hosts must share; it reads the vote of the step before
        # the one just dispatched, which has (nearly always) finished while this one is queued, so the device does
        # not idle for it. `stop_check_every` > 1 spaces the reads out (a stop then takes up to that many steps).
        if previous_vote is None or self.step % cfg.stop_check_every:
            return False
        agreed = bool(jax.device_get(previous_vote))
        if agreed and not self.stop.stop:
            self.stop.signal_name = "stop requested by another process"
        return agreed

    def check(self, pending: PendingSteps) -> None:
        """Fetch the pending steps' metrics: log them, or stop at a non-finite step, naming it and the examples of
        every process (the check runs at the same steps on all processes, so they all reach the gather)."""
        try:
            pending.check()
        except NonFiniteStep as bad:
            examples = bad.examples.tolist()
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                examples = np.asarray(multihost_utils.process_allgather(bad.examples)).reshape(-1).tolist()
            raise TrainingError(non_finite_message(bad, examples, self.last_saved, self.ckpt.directory)) from None

    def save(self) -> None:
        """Start the checkpoint of this step (written in the background; `check` ran first, so the state is good)."""
        meta = {"step": self.step, "data_state": self.job.data.get_state(), "fingerprint": self.fingerprint}
        self.ckpt.save(self.step, self.state, json.loads(json.dumps(meta)))
        self.last_saved = self.step

    def stop_while_waiting(self, pending: PendingSteps) -> int:
        """Asked to stop while the next batch was still being prepared (e.g. the stream was searching for usable
        samples): save what was trained since the last checkpoint, and exit."""
        if self.step != self.last_saved and self.step > 0:
            self.check(pending)
            self.save()
        kept = (f"saved step {self.step}" if self.last_saved == self.step else "no checkpoint saved yet"
                if self.last_saved is None else f"the last checkpoint is step {self.last_saved}")
        self.writer.message(f"[bard_jax.train] {self.stop.signal_name or 'stop requested'} while waiting for data: "
                            f"{kept}, exiting with status {cli.EXIT_STOPPED}; re-run to resume")
        return cli.EXIT_STOPPED


def non_finite_message(bad: NonFiniteStep, examples: list[int], last_saved: int | None, directory: str) -> str:
    """What a non-finite step stops the run with: the step, its loss and gradient norm, its examples (all
    processes'), and what stays."""
    later = bad.checked_at - bad.step
    held = ("" if later == 0 else f", nor that of step {bad.checked_at}," if later == 1
            else f", nor those of steps {bad.step + 1}-{bad.checked_at},")
    kept = (f"the last good checkpoint ({last_saved}) is kept in {directory}" if last_saved is not None
            else f"no checkpoint had been saved yet in {directory}")
    return (f"non-finite loss at step {bad.step} (loss={float(bad.metrics['loss'])}, "
            f"grad_norm={float(bad.metrics['grad_norm'])}) on examples {examples}; the update was not applied"
            f"{held} and {kept}")


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m bard_jax.train"))
