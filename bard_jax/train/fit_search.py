"""Settings that make a recipe fit a device-memory budget, found by planning candidates (`memory_plan`).

The candidates change only what trades speed for memory, and are tried from the cheapest in speed:

1. the mesh: every device on fsdp (parameters, optimizer state and teacher sharded over all of them), then tensor
   parallelism over 2, 4 and 8 of them (heads and MLP units split; the examples shared by those devices);
2. on each mesh, the micro-batch: the recipe's, then one example per batch shard (more accumulation steps);
3. for each, the remat policy: the recipe's, then each that keeps less for the backward (`REMAT_BY_MEMORY`).

Keeping less never needs more memory, so each (mesh, micro-batch) is probed with the policy that keeps the least
first: when that does not fit, no policy will and the next one is tried; when it does, the lighter policies are
tried in order and the first that fits is the proposal. A candidate whose arguments alone (parameters, optimizer
state, teacher, batch) exceed the budget is not compiled. The search stops at a fit, or after `MAX_CANDIDATES`
compilations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

from bard_jax.train.config import MeshSection, TrainConfig
from bard_jax.train.memory_plan import MemoryPlan, Talk, plan_memory, size
from bard_jax.train.mesh import mesh_shape, micro_batch_on, run_mesh

# Remat policies, from the one that keeps the most activations for the backward to the one that keeps the least.
REMAT_BY_MEMORY = ("none", "dots_saveable", "dots", "projections", "full")
MAX_CANDIDATES = 8
# The keys a candidate may change, as the command line names them.
SEARCHED_KEYS = ("mesh.data", "mesh.fsdp", "mesh.tensor", "data.micro_batch_size", "model.remat_policy")


@dataclasses.dataclass(frozen=True)
class Tried:
    """One candidate and what it needs (`plan` is None when it was not compiled: `needs` is then its arguments)."""

    cfg: TrainConfig
    needs: int
    plan: MemoryPlan | None

    def describe(self, written: TrainConfig) -> str:
        needs = f"needs {size(self.needs)}" if self.plan is not None else f"arguments alone {size(self.needs)}"
        return f"{overrides(written, self.cfg) or 'the recipe as written'}: {needs}"


@dataclasses.dataclass(frozen=True)
class SearchResult:
    tried: list[Tried]
    found: Tried | None  # the first candidate that fits

    @property
    def smallest(self) -> Tried | None:
        compiled = [t for t in self.tried if t.plan is not None]
        return min(compiled, key=lambda t: t.needs) if compiled else None


def overrides(written: TrainConfig, cfg: TrainConfig) -> str:
    """The `--recipe.KEY=VALUE` flags that turn `written` into `cfg` (among `SEARCHED_KEYS`)."""
    flags = []
    for key in SEARCHED_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value != getattr(getattr(written, section), name):
            flags.append(f"--recipe.{key}={value}")
    return " ".join(flags)


def settings(written: TrainConfig, devices: int, heads: Sequence[int]) -> Iterator[list[TrainConfig]]:
    """For each (mesh, micro-batch) to try, cheapest in speed first: its candidates from the recipe's remat policy
    to the one that keeps the least (module docstring). Tensor sizes divide the devices and every head count in
    `heads`; micro-batches are multiples of the batch shards and divide the global batch."""
    policy = written.model.remat_policy
    remats = REMAT_BY_MEMORY[REMAT_BY_MEMORY.index(policy):] if policy in REMAT_BY_MEMORY else REMAT_BY_MEMORY
    micros = [written.data.micro_batch_size] + ([-1] if written.data.micro_batch_size != -1 else [])
    for tensor in (1, 2, 4, 8):
        if devices % tensor or any(h % tensor for h in heads):
            continue
        shards = devices // tensor
        seen = set()
        for micro in micros:
            resolved = shards if micro == -1 else micro
            if resolved % shards or written.data.global_batch_size % resolved or resolved in seen:
                continue
            seen.add(resolved)
            yield [dataclasses.replace(
                written, mesh=MeshSection(data=1, fsdp=-1, tensor=tensor),
                data=dataclasses.replace(written.data, micro_batch_size=micro),
                model=dataclasses.replace(written.model, remat_policy=remat)) for remat in remats]


def search(written: TrainConfig, devices: Sequence[Any], budget: int, heads: Sequence[int], talk: Talk,
           skip: TrainConfig | None = None, limit: int = MAX_CANDIDATES) -> SearchResult:
    """Plan candidates of `written` on `devices` until one fits `budget` (bytes per device) or `limit` were compiled
    (module docstring); `skip`: a setting already planned and known not to fit (the recipe's own). Each candidate
    is announced on `talk`."""
    tried: list[Tried] = []

    def compiled() -> int:
        return sum(t.plan is not None for t in tried)

    def plan(cfg: TrainConfig) -> Tried | None:
        """The candidate planned; None for `skip`, which is known not to fit."""
        if skip is not None and _same_setting(cfg, skip, len(devices)):
            return None
        talk(f"candidate: {overrides(written, cfg) or 'the recipe as written'}")
        memory = plan_memory(cfg, run_mesh(cfg, devices), budget=budget)
        if not memory.complete:
            talk(f"  arguments alone need {size(memory.arguments)}: not compiled")
            tried.append(Tried(cfg, memory.arguments, None))
        else:
            talk(f"  needs {size(memory.total)}: {'fits' if memory.total <= budget else 'does not fit'}")
            tried.append(Tried(cfg, memory.total, memory))
        return tried[-1]

    for ladder in settings(written, len(devices), heads):
        if compiled() >= limit:
            talk(f"stopping the search after {limit} compiled candidates")
            break
        probe = plan(ladder[-1])  # keeps the least: if it does not fit, nothing on this ladder does
        if probe is None or probe.needs > budget:
            continue
        for cfg in ladder[:-1]:  # the lightest that fits is the cheapest in speed
            if compiled() >= limit:
                break
            result = plan(cfg)
            if result is not None and result.needs <= budget:
                return SearchResult(tried, result)
        return SearchResult(tried, probe)
    return SearchResult(tried, None)


def _same_setting(a: TrainConfig, b: TrainConfig, devices: int) -> bool:
    """Whether two configs plan the same mesh, micro-batch and remat on `devices` devices."""
    def key(c: TrainConfig) -> tuple:
        shape = mesh_shape(c, devices)
        return shape, micro_batch_on(c, shape[0] * shape[1]), c.model.remat_policy

    return key(a) == key(b)
