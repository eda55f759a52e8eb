"""`--dry-run`: plan a recipe's memory on a mesh without reading any weights.

The step is built by `setup.plan_step`, the builder the training loop uses (same objective config, batch schema,
shardings and control inputs), and compiled for the schema's largest batch. The report gives, per device: parameters,
optimizer state, teacher, batch, XLA's temporaries (activations), the arguments, the total, and a verdict against a
device-memory budget (`--device-memory 80GB`; default: the detected accelerator's memory, none on CPU). A plan that
does not fit is an error naming its largest parts. Fake CPU devices are fine for planning
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`); one compilation of the step is the whole cost.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

from bard_jax.errors import InputError
from bard_jax.sharding import check_mesh_divides
from bard_jax.train import setup
from bard_jax.train.config import TrainConfig

GiB = 2**30
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
    return int(value)


def detected_device_memory() -> int | None:
    """The memory one accelerator lets this process use (XLA's `bytes_limit`), or None on CPU."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    limit = (device.memory_stats() or {}).get("bytes_limit")
    return int(limit) if limit else None


def per_device_bytes(tree, shardings) -> int:
    """Bytes one device holds for a tree of abstract arrays under their shardings (the largest device)."""
    total = 0
    for x, s in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(shardings)):
        total += int(np.prod(s.shard_shape(x.shape))) * jnp.dtype(x.dtype).itemsize
    return total


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Per-device bytes of a compiled step. `parts` names what the total is made of (largest first in a verdict);
    the XLA figures are its memory analysis of the compiled program."""

    name: str
    header: tuple[str, ...]
    parts: dict[str, int]  # params, optimizer state, teacher, batch, temporaries, outputs (not aliased)
    arguments: int
    temporaries: int
    outputs: int
    aliased: int  # outputs written into the donated arguments' buffers

    @property
    def total(self) -> int:
        return self.arguments + self.temporaries + self.outputs - self.aliased

    def largest(self, n: int = 3) -> str:
        parts = sorted(((v, k) for k, v in self.parts.items() if v > 0), reverse=True)[:n]
        return ", ".join(f"{k} {size(v)}" for v, k in parts)

    def verdict(self, budget: int | None, source: str) -> str:
        if budget is None:
            return "no device-memory budget (CPU devices): pass --device-memory 80GB for a verdict"
        if self.total <= budget:
            return f"fits in {size(budget)} per device ({source}), {size(budget - self.total)} to spare"
        return (f"does NOT fit in {size(budget)} per device ({source}): it needs {size(self.total)}; largest parts: "
                f"{self.largest()}")

    def report(self, budget: int | None, source: str) -> str:
        parts = " | ".join(f"{k} {size(v)}" for k, v in self.parts.items())
        return "\n".join([
            *self.header,
            f"  per device: {parts}",
            f"  XLA memory analysis per device: arguments {size(self.arguments)}, temporaries "
            f"{size(self.temporaries)}, outputs {size(self.outputs)} ({size(self.aliased)} of them in the donated "
            f"state's buffers); total {size(self.total)}",
            f"  verdict: {self.verdict(budget, source)}",
        ])

    def check(self, budget: int | None, source: str) -> None:
        """DoesNotFitError (a one-line message) when the total exceeds the budget."""
        if budget is not None and self.total > budget:
            raise DoesNotFitError(f"{self.name} {self.verdict(budget, source)}")


def size(n: float) -> str:
    """Bytes in GiB, or in MiB / KiB when small (a tiny recipe's plan would read 0.00 GiB)."""
    for unit, scale in (("GiB", GiB), ("MiB", 2**20)):
        if n >= 0.1 * scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n / 2**10:.1f} KiB"


def budget_source(text: str | None, budget: int | None) -> str:
    """How the budget was set, for the report."""
    if text is not None:
        return f"--device-memory {text}"
    return "the detected accelerator's memory" if budget is not None else "none"


def plan_memory(cfg: TrainConfig, mesh) -> MemoryPlan:
    """Compile the recipe's train step on `mesh` for its largest batch (no weights read) and measure it."""
    model_config = setup.planned_config(cfg.model.init_from, cfg.model.preset)
    o = cfg.objective
    teacher_config = setup.planned_config(o.teacher_init_from, "8b") if o.kind == "swd" else None
    check_mesh_divides(mesh, ("data.micro_batch_size", cfg.data.micro_batch_size),
                       setup.head_counts(model_config, teacher_config))
    vocab = model_config.text.vocab_size
    # The recipe's token ids stand in for the tokenizer's (there is none before the data is prepared); an id past a
    # small preset's vocabulary is clamped, as ids do not change the memory of the step.
    obj = setup.objective_config(cfg, vocab, min(o.mask_token_id, vocab - 1), min(o.pad_token_id, vocab - 1),
                                 setup.vision_ids(model_config))
    plan = setup.plan_step(cfg, model_config, teacher_config, obj, mesh)
    batch = plan.abstract_batch()
    compiled = plan.step_for(batch).lower(plan.state, batch, plan.teacher, plan.abstract_control()).compile()
    mem = compiled.memory_analysis()
    if mem is None:
        raise InputError(f"the {jax.devices()[0].platform} backend gives no memory analysis of compiled programs")

    params = per_device_bytes(plan.params, plan.param_shardings)
    optimizer = per_device_bytes(plan.state.opt_state, plan.state_shardings.opt_state)
    teacher = per_device_bytes(plan.teacher, plan.teacher_shardings) if plan.teacher is not None else 0
    batch_bytes = per_device_bytes(batch, {k: v.sharding for k, v in batch.items()})
    parts = {"params": params, "optimizer state": optimizer, "teacher": teacher, "batch": batch_bytes,
             "temporaries": int(mem.temp_size_in_bytes),
             "outputs not in donated buffers": int(mem.output_size_in_bytes - mem.alias_size_in_bytes)}
    if plan.teacher is None:
        del parts["teacher"]
    d = cfg.data
    rows = f"{plan.batch['pixel_values'].shape[1]}"
    if "pixel_values_videos" in plan.batch:  # planned at once with the image rows: the most a batch can hold
        rows += f" + {plan.batch['pixel_values_videos'].shape[1]} video"
    header = (
        f"dry run of {cfg.name}: mesh {dict(mesh.shape)} ({mesh.devices.size} devices, "
        f"{jax.devices()[0].platform}); objective {o.kind} b={o.block_size}"
        + (f", teacher b={o.teacher_block_size}" if plan.teacher is not None else ""),
        f"  micro-batch {d.micro_batch_size} x {plan.accum} accumulation steps, tokens per sample "
        f"{plan.batch['input_ids'].shape[1]}, patch rows per sample {rows}, remat "
        f"{cfg.model.remat_policy}, compute {cfg.model.compute_dtype}, attention {obj.attention.impl}",
    )
    return MemoryPlan(name=cfg.name, header=header, parts=parts, arguments=int(mem.argument_size_in_bytes),
                      temporaries=int(mem.temp_size_in_bytes), outputs=int(mem.output_size_in_bytes),
                      aliased=int(mem.alias_size_in_bytes))
