"""The Mini-BARD training chain, run through the public training command (`bard_jax.train`'s entry point).

Each stage is a recipe under `recipes/minibard/`; its inputs (the previous stage, the teacher, the data) are passed
as ordinary `--recipe.*` overrides, so every stage can be re-run by hand with the command it prints. A finished
stage (its `export/` exists) is skipped; an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import time

import bard_jax
from bard_jax import cli
from bard_jax.errors import BardError

BLOCKS = (4, 8, 16, 32)


class StageStopped(BardError, RuntimeError):
    """A stage stopped by a signal before its last step (its checkpoint is saved; re-running resumes)."""

    exit_status = cli.EXIT_STOPPED


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # recipe file stem: ar, pbm_b4, ..., swd_b32
    kind: str  # ar | pbm | swd
    block_size: int  # 1 for the AR source
    init_from: str = ""  # previous stage's name
    teacher: str = ""


def chain() -> list[Stage]:
    stages = [Stage("ar", "ar", 1)]
    prev = "ar"
    for b in BLOCKS:
        stages.append(Stage(f"pbm_b{b}", "pbm", b, init_from=prev))
        prev = f"pbm_b{b}"
    stages += [Stage(f"swd_b{b}", "swd", b, init_from=f"pbm_b{b}", teacher="pbm_b4") for b in BLOCKS[1:]]
    return stages


def recipes_dir() -> str:
    """recipes/minibard next to the package (a source checkout or an editable install)."""
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(bard_jax.__file__))),
                        "recipes", "minibard")
    if not os.path.isdir(here):
        raise FileNotFoundError(f"Mini-BARD recipes not found at {here}: run from a source checkout of bard_jax")
    return here


def train_argv(stage: Stage, workdir: str, overrides: tuple[str, ...] = ()) -> list[str]:
    argv = ["--recipe", os.path.join(recipes_dir(), f"{stage.name}.py"), "--workdir",
            os.path.join(workdir, stage.name), f"--recipe.data.synthetic_dir={os.path.join(workdir, 'data')}"]
    if stage.init_from:
        argv.append(f"--recipe.model.init_from={os.path.join(workdir, stage.init_from)}")
    if stage.teacher:
        argv.append(f"--recipe.objective.teacher_init_from={os.path.join(workdir, stage.teacher)}")
    return argv + list(overrides)


def run_stage(stage: Stage, workdir: str, overrides: tuple[str, ...] = ()) -> float:
    """Train one stage (skipped when already exported); returns the seconds it took."""
    from bard_jax.train.loop import main as train_main

    if os.path.isdir(os.path.join(workdir, stage.name, "export")):
        print(f"[minibard] {stage.name}: already trained, skipped", flush=True)
        return 0.0
    argv = train_argv(stage, workdir, overrides)
    print(f"[minibard] {stage.name}: python -m bard_jax.train {shlex.join(argv)}", flush=True)
    t0 = time.time()
    rc = train_main(argv)
    if rc == cli.EXIT_STOPPED:
        raise StageStopped(f"stage {stage.name} stopped before its last step; re-run the same command to resume")
    if rc != cli.EXIT_OK:
        raise RuntimeError(f"stage {stage.name} failed (exit {rc})")
    return time.time() - t0
