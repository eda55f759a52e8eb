"""The memory a recipe's train step needs per device, from XLA's analysis of the compiled step (no weights read).

`plan_memory(cfg, mesh)` builds the step with `setup.plan_step`, the builder the training loop uses (same objective
config, batch schema, shardings and control inputs), compiles it for the schema's largest batch and returns a
`MemoryPlan`: per device, the parameters, optimizer state, teacher and batch (from their shardings), XLA's
temporaries, arguments and outputs, and the update's model FLOPs. Each phase is announced on `talk` with the time
since the dry run began.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bard_jax.errors import InputError
from bard_jax.train import setup
from bard_jax.train.config import TrainConfig
from bard_jax.train.flops import step_flops
from bard_jax.train.mesh import resolve_for_mesh

GiB = 2**30


class Talk:
    """One line per phase of a dry run, `[dry run   12.3 s] what`, the time counted from the talk's creation."""

    def __init__(self, say: Callable[[str], None] = lambda line: print(line, flush=True)):
        self.say = say
        self.start = time.monotonic()

    def __call__(self, what: str) -> None:
        self.say(f"[dry run {time.monotonic() - self.start:6.1f} s] {what}")


def size(n: float) -> str:
    """Bytes in GiB, or in MiB / KiB when small (a tiny recipe's plan would read 0.00 GiB)."""
    for unit, scale in (("GiB", GiB), ("MiB", 2**20)):
        if n >= 0.1 * scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n / 2**10:.1f} KiB"


def per_device_bytes(tree, shardings) -> int:
    """Bytes one device holds for a tree of abstract arrays under their shardings (the largest device)."""
    total = 0
    for x, s in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(shardings)):
        total += int(np.prod(s.shard_shape(x.shape))) * jnp.dtype(x.dtype).itemsize
    return total


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Per-device bytes of a compiled step. `parts` names what the total is made of (largest first in a verdict);
    the XLA figures are its memory analysis of the compiled program; `flops` the update's model FLOPs (all devices,
    `flops.step_flops`)."""

    name: str
    header: tuple[str, ...]
    parts: dict[str, int]  # params, optimizer state, teacher, batch, temporaries, outputs (not aliased)
    arguments: int
    temporaries: int
    outputs: int
    aliased: int  # outputs written into the donated arguments' buffers
    flops: int = 0
    devices: int = 1
    micro_batch: int = 0  # examples per micro-batch (resolved for the mesh)
    accumulation: int = 0  # micro-batches per update
    # False: not compiled, because the arguments alone (`arguments`) exceed the budget it was planned against.
    complete: bool = True

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
        lines = [
            *self.header,
            f"  per device: {parts}",
            f"  XLA memory analysis per device: arguments {size(self.arguments)}, temporaries "
            f"{size(self.temporaries)}, outputs {size(self.outputs)} ({size(self.aliased)} of them in the donated "
            f"state's buffers); total {size(self.total)}",
        ]
        if self.flops:
            lines.append(f"  model FLOPs per update: {self.flops:.3e} ({self.flops / self.devices:.3e} per device; "
                         f"MFU = per-device FLOPs / (seconds per update x the device's peak FLOP/s))")
        lines.append(f"  verdict: {self.verdict(budget, source)}")
        return "\n".join(lines)

    def fits(self, budget: int | None) -> bool:
        return budget is None or self.total <= budget


def plan_memory(cfg: TrainConfig, mesh, talk: Talk | None = None, budget: int | None = None) -> MemoryPlan:
    """Compile the recipe's train step on `mesh` for its largest batch (no weights read) and measure it. `cfg` may
    hold a micro-batch of -1 (one example per batch shard): it is resolved for this mesh. Given a `budget` (bytes
    per device) that the arguments alone exceed, nothing is compiled: the plan is incomplete (`complete` False)."""
    talk = talk or Talk(lambda line: None)
    talk("building the abstract state (shapes and shardings of parameters, optimizer state, teacher, batch)")
    model_config, teacher_config = setup.planned_configs(cfg)
    o = cfg.objective
    cfg = resolve_for_mesh(cfg, mesh, setup.head_counts(model_config, teacher_config))
    vocab = model_config.text.vocab_size
    # The recipe's token ids stand in for the tokenizer's (there is none before the data is prepared); an id past a
    # small preset's vocabulary is clamped, as ids do not change the memory of the step.
    obj = setup.objective_config(cfg, vocab, min(o.mask_token_id, vocab - 1), min(o.pad_token_id, vocab - 1),
                                 setup.vision_ids(model_config))
    plan = setup.plan_step(cfg, model_config, teacher_config, obj, mesh)
    batch = plan.abstract_batch()
    params = per_device_bytes(plan.params, plan.param_shardings)
    optimizer = per_device_bytes(plan.state.opt_state, plan.state_shardings.opt_state)
    teacher = per_device_bytes(plan.teacher, plan.teacher_shardings) if plan.teacher is not None else 0
    batch_bytes = per_device_bytes(batch, {k: v.sharding for k, v in batch.items()})
    arguments = params + optimizer + teacher + batch_bytes
    if budget is not None and arguments > budget:
        parts = {"params": params, "optimizer state": optimizer, "teacher": teacher, "batch": batch_bytes}
        return MemoryPlan(name=cfg.name, header=(), parts=parts, arguments=arguments, temporaries=0, outputs=0,
                          aliased=0, devices=mesh.devices.size, complete=False)
    talk("tracing and lowering the train step")
    lowered = plan.step_for(batch).lower(plan.state, batch, plan.teacher, plan.abstract_control())
    talk(f"compiling the train step for {mesh.devices.size} {jax.devices()[0].platform} devices")
    compiled = lowered.compile()
    talk("analysing the compiled step")
    mem = compiled.memory_analysis()
    if mem is None:
        raise InputError(f"the {jax.devices()[0].platform} backend gives no memory analysis of compiled programs")

    parts = {"params": params, "optimizer state": optimizer, "teacher": teacher, "batch": batch_bytes,
             "temporaries": int(mem.temp_size_in_bytes),
             "outputs not in donated buffers": int(mem.output_size_in_bytes - mem.alias_size_in_bytes)}
    if plan.teacher is None:
        del parts["teacher"]
    d = cfg.data
    tokens = plan.batch["input_ids"].shape[1]
    slots = plan.batch["noisy_index"].shape[1]
    rows = plan.batch["pixel_values"].shape[1]
    rows_text = f"{rows}"
    if "pixel_values_videos" in plan.batch:  # planned at once with the image rows: the most a batch can hold
        rows += plan.batch["pixel_values_videos"].shape[1]
        rows_text += f" + {plan.batch['pixel_values_videos'].shape[1]} video"
    m = mesh.shape
    header = (
        f"dry run of {cfg.name}: mesh {dict(m)} ({mesh.devices.size} devices, "
        f"{jax.devices()[0].platform}); objective {o.kind} b={o.block_size}"
        + (f", teacher b={o.teacher_block_size}" if plan.teacher is not None else ""),
        f"  micro-batch {d.micro_batch_size} x {plan.accum} accumulation steps, tokens per sample {tokens}, patch "
        f"rows per sample {rows_text}, remat {cfg.model.remat_policy}, compute {cfg.model.compute_dtype}, "
        f"attention {obj.attention.impl}",
    )
    flops = step_flops(model_config, teacher_config, samples=d.global_batch_size, tokens=tokens, slots=slots,
                       pixel_rows=rows)
    return MemoryPlan(name=cfg.name, header=header, parts=parts, arguments=int(mem.argument_size_in_bytes),
                      temporaries=int(mem.temp_size_in_bytes), outputs=int(mem.output_size_in_bytes),
                      aliased=int(mem.alias_size_in_bytes), flops=flops, devices=mesh.devices.size,
                      micro_batch=d.micro_batch_size, accumulation=plan.accum)
