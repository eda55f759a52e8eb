"""Checkpoint loading / conversion: wall time and peak RSS against the checkpoint size.

Writes a random bf16 HF checkpoint with the real 2B widths (text 2048/6144, 16/8 heads, head_dim 128, vocab 151936;
vision 1024/4096) but fewer layers, sharded into several safetensors files, then measures in fresh processes:
  load_hf   bj.load_pretrained(HF dir, dtype=bfloat16)
  convert   convert/hf_to_jax.py (HF dir -> orbax)
  load_ours bj.load_pretrained(converted dir, dtype=bfloat16)
Peak RSS is the child's VmHWM; "baseline" is a child that only imports bard_jax and initialises jax.

  python benchmarks/bench_load.py [--text-layers 4] [--vision-layers 4] [--dir /tmp/bench_ckpt]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import ml_dtypes
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_checkpoint(path: str, text_layers: int, vision_layers: int, shard_bytes: int = 300 * 2**20) -> int:
    from bard_jax import hf
    from bard_jax.config import preset
    from bard_jax.safetensors_io import write_file

    base = preset("2b")
    cfg = base.replace(
        text=base.text.__class__(**{**base.text.__dict__, "num_hidden_layers": text_layers}),
        vision=base.vision.__class__(**{**base.vision.__dict__, "depth": vision_layers,
                                        "deepstack_visual_indexes": tuple(range(min(3, vision_layers)))}),
    )
    os.makedirs(path, exist_ok=True)
    shapes = hf.param_shapes(cfg)
    rng = np.random.default_rng(0)
    files, current, size, weight_map, total = [], {}, 0, {}, 0

    def flush():
        nonlocal current, size
        if current:
            name = f"model-{len(files) + 1:05d}.safetensors"
            write_file(os.path.join(path, name), current, {"format": "pt"})
            files.append((name, list(current)))
            current, size = {}, 0

    for entry in hf.name_table(cfg):
        our = hf._get(shapes, entry.path)
        shape = hf.hf_shape_of(entry, our, cfg)
        for name in hf.hf_names(entry):
            arr = (rng.standard_normal(shape, np.float32) * 0.02).astype(ml_dtypes.bfloat16)
            if size + arr.nbytes > shard_bytes:
                flush()
            current[name] = arr
            size += arr.nbytes
            total += arr.nbytes
    flush()
    for i, (name, names) in enumerate(files):  # rename to the -of-N form now that N is known
        final = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        os.replace(os.path.join(path, name), os.path.join(path, final))
        weight_map.update({n: final for n in names})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    raw = cfg.to_hf_dict()
    raw["dtype"] = "bfloat16"
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
    return total


CHILD = {
    "baseline": "import jax, bard_jax; jax.numpy.zeros(1).block_until_ready()",
    "load_hf": "import bard_jax as bj; m = bj.load_pretrained(SRC, dtype='bfloat16'); "
               "import jax; jax.block_until_ready(m.params)",
    "load_ours": "import bard_jax as bj; m = bj.load_pretrained(DST, dtype='bfloat16'); "
                 "import jax; jax.block_until_ready(m.params)",
}


def measure(name: str, src: str, dst: str) -> tuple[float, int]:
    if name == "convert":
        code = (f"import runpy, sys; sys.argv = ['hf_to_jax.py', {src!r}, {dst!r}]; "
                f"\ntry:\n    runpy.run_path({os.path.join(REPO, 'convert', 'hf_to_jax.py')!r}, run_name='__main__')"
                f"\nexcept SystemExit as e:\n    assert not e.code, e.code")
    else:
        code = CHILD[name].replace("SRC", repr(src)).replace("DST", repr(dst))
    # VmHWM of this process image (ru_maxrss would include the parent's RSS inherited across fork/exec).
    code += "\nimport sys\nprint([x for x in open('/proc/self/status') if x.startswith('VmHWM')][0], file=sys.stderr)"
    t0 = time.time()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if r.returncode:
        raise RuntimeError(f"{name} failed:\n{r.stderr[-3000:]}")
    rss_kb = int([ln for ln in r.stderr.splitlines() if ln.startswith("VmHWM")][-1].split()[1])
    return wall, rss_kb * 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text-layers", type=int, default=4)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--dir", default="/tmp/bard_bench_ckpt")
    args = p.parse_args()
    src, dst = os.path.join(args.dir, "hf"), os.path.join(args.dir, "converted")
    t0 = time.time()
    size = write_checkpoint(src, args.text_layers, args.vision_layers)
    print(f"checkpoint: {size / 2**30:.2f} GiB bf16 in {len(os.listdir(src)) - 2} shards "
          f"(written in {time.time() - t0:.1f}s)")
    print(f"{'step':10s} {'wall s':>8s} {'peak RSS GiB':>13s} {'RSS / ckpt':>11s} {'(RSS - baseline) / ckpt':>24s}")
    base_wall, base_rss = measure("baseline", src, dst)
    print(f"{'baseline':10s} {base_wall:8.1f} {base_rss / 2**30:13.2f} {base_rss / size:11.2f} {'':>24s}")
    for name in ("load_hf", "convert", "load_ours"):
        wall, rss = measure(name, src, dst)
        print(f"{name:10s} {wall:8.1f} {rss / 2**30:13.2f} {rss / size:11.2f} {(rss - base_rss) / size:24.2f}")


if __name__ == "__main__":
    main()
