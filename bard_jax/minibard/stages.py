"""The Mini-BARD training chain, run through the public training command (`bard_jax.train`'s entry point).

Each stage is a recipe under `recipes/minibard/`; its inputs (the previous stage, the teacher, the data) are passed
as ordinary `--recipe.*` overrides, so every stage can be re-run by hand with the command it prints. A finished
stage (its `export/` exists) is skipped; an interrupted one resumes from its checkpoint.

Each stage has its own data seed (`data_seed`: the order of the training examples and the diffusion noise), written
in its recipe, so the diffusion stages do not all start on the same first examples. An ablation stage takes the
seed of the main stage it is compared with, so that the pair differs only in what the ablation changes.
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
    name: str  # recipe file stem: ar, pbm_b4, ..., swd_b32, and the ablations'
    kind: str  # ar | pbm | swd
    block_size: int  # 1 for the AR source
    init_from: str = ""  # previous stage's name
    teacher: str = ""
    data_seed: int = 0  # the recipe's data.seed and objective.seed
    compare_with: str = ""  # an ablation: the main stage it is compared with
    shift_labels: bool = False  # decoded with the label-shift convention (the shift ablation)


def chain() -> list[Stage]:
    """The main chain: the AR source, PBM 4 -> 8 -> 16 -> 32, SWD B8/B16/B32 with the PBM B4 teacher."""
    stages = [Stage("ar", "ar", 1)]
    prev = "ar"
    for b in BLOCKS:
        stages.append(Stage(f"pbm_b{b}", "pbm", b, init_from=prev, data_seed=len(stages)))
        prev = f"pbm_b{b}"
    stages += [Stage(f"swd_b{b}", "swd", b, init_from=f"pbm_b{b}", teacher="pbm_b4", data_seed=4 + i)
               for i, b in enumerate(BLOCKS[1:], start=1)]
    return stages


def ablations() -> list[Stage]:
    """The paper's ablations in miniature, each compared with one main stage (python -m bard_jax.minibard
    --ablations): (a) AR -> B32 directly, as many steps as PBM B4 + B8 + B16 + B32; (b) SWD B32 with the AR source
    as teacher; (c) PBM B4 with the mixed-noise prior; (d) PBM B4 with label shift."""
    main = {s.name: s for s in chain()}
    return [
        Stage("direct_b32", "pbm", 32, init_from="ar", data_seed=main["pbm_b4"].data_seed, compare_with="pbm_b32"),
        Stage("swd_b32_ar_teacher", "swd", 32, init_from="pbm_b32", teacher="ar",
              data_seed=main["swd_b32"].data_seed, compare_with="swd_b32"),
        Stage("pbm_b4_mix", "pbm", 4, init_from="ar", data_seed=main["pbm_b4"].data_seed, compare_with="pbm_b4"),
        Stage("pbm_b4_shift", "pbm", 4, init_from="ar", data_seed=main["pbm_b4"].data_seed, compare_with="pbm_b4",
              shift_labels=True),
    ]


def stage_named(name: str) -> Stage:
    for s in chain() + ablations():
        if s.name == name:
            return s
    raise KeyError(name)


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
