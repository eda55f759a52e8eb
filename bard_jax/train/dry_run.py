"""`--dry-run`: plan a recipe's memory on a mesh without reading any weights.

The step is built by `setup.plan_step`, the builder the training loop uses (same objective config, batch schema,
shardings and control inputs), and compiled for the schema's largest batch. The report gives, per device: parameters,
optimizer state, teacher, batch, XLA's temporaries (activations), the arguments, the total, a verdict against a
device-memory budget (`--device-memory 80GB`; default: the detected accelerator's memory, none on CPU), and the
update's model FLOPs (`flops.py`). Fake CPU devices are fine for planning
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`); one compilation of the step is the whole cost, and each
phase is announced with the time since the start, so a wait on a real-size compile is not a silent one.

A plan that does not fit is an error naming its largest parts and, when one was found, the settings that fit: the
dry run plans other meshes, micro-batches and remat policies, cheapest in speed first (`fit_search.py`), and
stops at the first that fits (at most `MAX_CANDIDATES` compilations). What it tried is printed, one line each.
"""

from __future__ import annotations

import math
import re

import jax
from jax.sharding import Mesh

from bard_jax import cli
from bard_jax.errors import InputError
from bard_jax.train import setup
from bard_jax.train.config import TrainConfig
from bard_jax.train.fit_search import MAX_CANDIDATES, overrides, search
from bard_jax.train.memory_plan import MemoryPlan, Talk, plan_memory, size

__all__ = ["DoesNotFitError", "MemoryPlan", "budget_source", "detected_device_memory", "parse_bytes", "run"]

# Size units of --device-memory: decimal (GB, as accelerators are sold) and binary (GiB); a bare number is bytes.
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class DoesNotFitError(InputError):
    """A recipe whose step needs more memory per device than the budget; the message names the largest parts."""


def parse_bytes(text: str, what: str) -> int:
    """Bytes of a size written as `80GB` (10^9), `80GiB` (2^30), `96e9` or `512 MiB`; InputError otherwise."""
    m = re.fullmatch(r"\s*((?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    value = float(m.group(1)) * UNITS[unit] if m and unit in UNITS else math.nan
    if not (math.isfinite(value) and value >= 1):
        raise InputError(f"{what} {text!r}: expected a size such as 80GB, 80GiB or 96e9 (bytes)")
    if not unit and value < 2**20:  # no accelerator has less than a MiB: a unit was forgotten
        raise InputError(f"{what} {text!r} is {int(value)} bytes: a size needs a unit, such as {text.strip()}GB or "
                         f"{text.strip()}GiB (a bare number is bytes)")
    return int(value)


def detected_device_memory() -> int | None:
    """The memory one accelerator lets this process use (XLA's `bytes_limit`), or None on CPU."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    limit = (device.memory_stats() or {}).get("bytes_limit")
    return int(limit) if limit else None


def budget_source(text: str | None, budget: int | None) -> str:
    """How the budget was set, for the report."""
    if text is not None:
        return f"--device-memory {text}"
    return "the detected accelerator's memory" if budget is not None else "none"


def run(written: TrainConfig, mesh: Mesh, budget_text: str | None = None, talk: Talk | None = None) -> int:
    """The dry run of a recipe as written (a micro-batch of -1 is resolved per mesh) on `mesh`: print the plan and
    its verdict; exit status 0 when it fits (or there is no budget), else `DoesNotFitError` naming its largest parts
    and the settings the search found to fit, or what it tried."""
    talk = talk or Talk()
    budget = parse_bytes(budget_text, "--device-memory") if budget_text is not None else detected_device_memory()
    source = budget_source(budget_text, budget)
    plan = plan_memory(written, mesh, talk)
    print(plan.report(budget, source), flush=True)
    if plan.fits(budget):
        return cli.EXIT_OK
    talk(f"{written.name} does not fit: planning other settings (at most {MAX_CANDIDATES} compilations)")
    model_config, teacher_config = setup.planned_configs(written)
    heads = list(setup.head_counts(model_config, teacher_config).values())
    result = search(written, list(mesh.devices.flat), budget, heads, talk, skip=written)
    for tried in result.tried:
        print(f"  tried {tried.describe(written)}", flush=True)
    verdict = f"{written.name} {plan.verdict(budget, source)}"
    if result.found is not None:
        raise DoesNotFitError(f"{verdict}; it fits with {overrides(written, result.found.cfg)} (needs "
                              f"{size(result.found.needs)})")
    smallest = result.smallest
    best = f" (the smallest: {smallest.describe(written)})" if smallest is not None else ""
    raise DoesNotFitError(
        f"{verdict}; none of the {len(result.tried)} other settings tried fits on {mesh.devices.size} devices{best}: "
        f"use more devices, or shorter samples (data.length_buckets) or fewer pixels per sample (data.max_pixels, "
        f"data.max_images)")
