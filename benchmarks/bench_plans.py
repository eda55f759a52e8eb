"""The memory plan of every shipped recipe at every size on 8, 16 and 64 devices, as shipped (no overrides).

  python benchmarks/bench_plans.py [--devices 8,16,64] [--sizes 2b,4b,8b] [--recipes pbm_b4,...,swd_b32]
                                   [--device-memory 80GiB] [--json FILE] [--markdown FILE]

Each device count runs in its own process on fake CPU devices (`--xla_force_host_platform_device_count`), which
plans each (recipe, size) with the dry run's own `plan_memory`: the recipe's default mesh and micro-batch resolved
for that many devices, no weights read (the presets stand in for checkpoints that do not exist here; the SWD
teacher is the 8B anchor). Per device: parameters, optimizer state, teacher, batch, XLA's temporaries, the total
(arguments + temporaries + outputs not written into the donated state), the verdict against the budget, and the
update's model FLOPs per device (`bard_jax/train/flops.py`), which MFU is read against:
MFU = FLOPs per device / (seconds per update x the device's peak FLOP/s). Prints a markdown table; `--json` keeps
the rows (one object per plan), `--markdown` writes the table to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ("pbm_b4", "pbm_b8", "pbm_b16", "pbm_b32", "swd_b8", "swd_b16", "swd_b32")
# The sizes the release trained each stage at (spec section 7): marked in the table.
RELEASED = {"pbm_b4": ("2b", "4b", "8b"), "pbm_b8": ("4b",), "pbm_b16": ("4b",), "pbm_b32": ("4b",),
            "swd_b8": ("2b", "4b"), "swd_b16": ("2b", "4b"), "swd_b32": ("4b",)}
GiB = 2**30


def worker(devices: int, sizes: list[str], recipes: list[str], budget_text: str) -> None:
    """Plan each (recipe, size) on this process's `devices` fake devices; one JSON line each on stdout."""
    import jax

    from bard_jax.train import recipe as recipe_lib
    from bard_jax.train.dry_run import parse_bytes
    from bard_jax.train.memory_plan import plan_memory
    from bard_jax.train.mesh import run_mesh

    assert len(jax.devices()) == devices, (len(jax.devices()), devices)
    budget = parse_bytes(budget_text, "--device-memory")
    for name in recipes:
        for size in sizes:
            os.environ["BARD_SIZE"] = size  # the recipes read it when loaded
            cfg = recipe_lib.load_recipe(os.path.join(REPO, "recipes", f"{name}.py"))
            mesh = run_mesh(cfg)
            t0 = time.monotonic()
            plan = plan_memory(cfg, mesh)
            row = {"recipe": name, "size": size, "devices": devices, "released": size in RELEASED[name],
                   "mesh": [int(mesh.shape[a]) for a in ("data", "fsdp", "tensor")],
                   "micro_batch": plan.micro_batch, "accumulation": plan.accumulation,
                   "global_batch": cfg.data.global_batch_size, "remat": cfg.model.remat_policy,
                   **{k.replace(" ", "_"): v for k, v in plan.parts.items()},
                   "arguments": plan.arguments, "total": plan.total, "budget": budget, "fits": plan.total <= budget,
                   "flops_per_update": plan.flops, "flops_per_device": plan.flops // devices,
                   "plan_seconds": round(time.monotonic() - t0, 1)}
            print(json.dumps(row), flush=True)


def table(rows: list[dict]) -> str:
    gib = lambda n: f"{n / GiB:.2f}"  # noqa: E731
    out = ["| recipe | size | devices | mesh (d x f x t) | micro x accum | params | optimizer | teacher | batch | "
           "temporaries | total | verdict (80 GiB) | TFLOP per device per update |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        accum = r["accumulation"]
        size = r["size"] + ("" if r["released"] else " (not released)")
        out.append(
            f"| {r['recipe']} | {size} | {r['devices']} | {' x '.join(map(str, r['mesh']))} | "
            f"{r['micro_batch']} x {accum} | {gib(r['params'])} | {gib(r['optimizer_state'])} | "
            f"{gib(r['teacher']) if 'teacher' in r else '-'} | {gib(r['batch'])} | {gib(r['temporaries'])} | "
            f"{gib(r['total'])} | {'fits' if r['fits'] else '**does NOT fit**'} | "
            f"{r['flops_per_device'] / 1e12:.0f} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="8,16,64")
    parser.add_argument("--sizes", default="2b,4b,8b")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--device-memory", default="80GiB")
    parser.add_argument("--json", default=None, help="write the rows here (JSON lines)")
    parser.add_argument("--markdown", default=None, help="write the table here")
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes, recipes = args.sizes.split(","), args.recipes.split(",")
    if args.worker:
        worker(args.worker, sizes, recipes, args.device_memory)
        return
    rows = []
    for devices in (int(n) for n in args.devices.split(",")):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
               "JAX_PLATFORMS": "cpu"}
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(devices), "--sizes", args.sizes,
               "--recipes", args.recipes, "--device-memory", args.device_memory]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO) as proc:
            for line in proc.stdout:
                row = json.loads(line)
                rows.append(row)
                print(f"{row['recipe']} {row['size']} on {devices}: {row['total'] / GiB:.2f} GiB "
                      f"({'fits' if row['fits'] else 'does NOT fit'}), planned in {row['plan_seconds']} s",
                      file=sys.stderr, flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(row) + "\n")
        if proc.returncode:
            sys.exit(f"the worker for {devices} devices failed (exit status {proc.returncode})")
    text = table(rows)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
