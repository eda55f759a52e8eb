"""Checkpoint loading / conversion / export: wall time and peak RSS against the checkpoint size.

Writes (without torch) a random bf16 HF checkpoint with the real 2B widths (text 2048 / mlp 6144, 16 / 8 heads,
head_dim 128, vocab 151936; vision 1024 / 4096, 16 heads) but fewer layers, sharded into several safetensors
files with an index, then measures each step in a fresh subprocess (so its peak RSS is its own):

  baseline   import jax + bard_jax.hf, one tiny device op (the fixed cost every step below includes)
  load_hf    hf.load_hf_params(HF dir, dtype=bfloat16)
  convert    python convert/hf_to_jax.py HF_DIR OURS_DIR
  load_ours  hf.load_converted(OURS_DIR, dtype=bfloat16)
  export     python convert/jax_to_hf.py OURS_DIR HF_BACK_DIR (and a check that the tensors are bitwise equal)

Peak RSS is the child's VmHWM (ru_maxrss would be inherited across fork+exec from this parent).

  python benchmarks/bench_load.py [--text-layers 4] [--vision-layers 4] [--dir /tmp/bard_bench_ckpt] [--keep]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

import ml_dtypes
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARD_BYTES = 300 * 2**20


def bench_config(text_layers: int, vision_layers: int):
    from bard_jax.config import preset

    base = preset("2b")
    return base.replace(
        text=dataclasses.replace(base.text, num_hidden_layers=text_layers),
        vision=dataclasses.replace(base.vision, depth=vision_layers,
                                   deepstack_visual_indexes=tuple(range(min(3, vision_layers)))),
    )


def write_checkpoint(path: str, config) -> int:
    """Random bf16 tensors straight into safetensors shards (one shard in memory at a time); returns bytes."""
    from bard_jax import hf
    from bard_jax.safetensors_io import write_file

    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(0)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = total = 0
    names: list[list[str]] = [[]]

    def flush() -> None:
        k = len(names) - 1
        write_file(os.path.join(path, f"part-{k}.safetensors"), shards[-1], {"format": "pt"})
        shards[-1] = {}

    for name, entry, _ in hf.hf_tensor_order(hf.name_table(config)):
        arr = (rng.standard_normal(entry.hf_shape, np.float32) * 0.02).astype(ml_dtypes.bfloat16)
        if names[-1] and size + arr.nbytes > SHARD_BYTES:
            flush()
            names.append([])
            size = 0
        shards[-1][name] = arr
        names[-1].append(name)
        size += arr.nbytes
        total += arr.nbytes
    flush()
    weight_map = {}
    for k, group in enumerate(names):  # the -of-N names need N
        final = f"model-{k + 1:05d}-of-{len(names):05d}.safetensors"
        os.replace(os.path.join(path, f"part-{k}.safetensors"), os.path.join(path, final))
        weight_map.update({n: final for n in group})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    raw = config.to_hf_dict()
    raw["dtype"] = "bfloat16"
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
    return total


PRELUDE = "import jax, bard_jax.hf as hf\n"
CHILD = {
    "baseline": "jax.numpy.zeros(1).block_until_ready()",
    "load_hf": "cfg, _ = hf.read_hf_config(SRC)\njax.block_until_ready(hf.load_hf_params(SRC, cfg, dtype='bfloat16'))",
    "convert": "run_script('hf_to_jax.py', SRC, DST)",
    "load_ours": "jax.block_until_ready(hf.load_converted(DST, dtype='bfloat16')[0])",
    "export": "run_script('jax_to_hf.py', DST, BACK, '--max-shard-size', '300MiB')",
}
RUN_SCRIPT = """
import runpy
def run_script(name, *argv):
    sys.argv = [name, *argv]
    try:
        runpy.run_path(os.path.join(REPO, 'convert', name), run_name='__main__')
    except SystemExit as e:
        assert not e.code, f'{name} failed with exit code {e.code}'
"""


def measure(step: str, paths: dict[str, str]) -> tuple[float, int]:
    code = "import os, sys\n" + RUN_SCRIPT + PRELUDE + CHILD[step]
    code += "\nprint([x for x in open('/proc/self/status') if x.startswith('VmHWM')][0], file=sys.stderr)"
    consts = "".join(f"{k} = {v!r}\n" for k, v in {**paths, "REPO": REPO}.items())
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", consts + code], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    wall = time.time() - t0
    if r.returncode:
        raise RuntimeError(f"{step} failed:\n{r.stderr[-3000:]}")
    rss_kb = int([ln for ln in r.stderr.splitlines() if ln.startswith("VmHWM")][-1].split()[1])
    return wall, rss_kb * 1024


def tensors_equal(a: str, b: str) -> bool:
    """Every tensor of HF dir `a` is in `b` with the same dtype, shape and bytes (one tensor in memory at a time)."""
    from bard_jax.hf import HFCheckpoint

    with HFCheckpoint(a) as x, HFCheckpoint(b) as y:
        if sorted(x.tensors) != sorted(y.tensors):
            return False
        for name in x.tensors:
            ix, iy = x.info(name), y.info(name)
            if ix["dtype"] != iy["dtype"] or ix["shape"] != iy["shape"]:
                return False
            rows = ix["shape"][0] if ix["shape"] else 1
            if x.read_rows(name, 0, rows).tobytes() != y.read_rows(name, 0, rows).tobytes():
                return False
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text-layers", type=int, default=4)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--dir", default="/tmp/bard_bench_ckpt")
    p.add_argument("--keep", action="store_true", help="keep the files afterwards")
    args = p.parse_args()
    paths = {k: os.path.join(args.dir, k.lower()) for k in ("SRC", "DST", "BACK")}
    shutil.rmtree(args.dir, ignore_errors=True)
    t0 = time.time()
    size = write_checkpoint(paths["SRC"], bench_config(args.text_layers, args.vision_layers))
    n_files = len([f for f in os.listdir(paths["SRC"]) if f.endswith(".safetensors")])
    print(f"checkpoint: {size / 2**30:.2f} GiB bf16, {n_files} shards ({args.text_layers} text layers, "
          f"{args.vision_layers} vision blocks; written in {time.time() - t0:.1f}s)")
    print(f"{'step':10s} {'wall s':>7s} {'peak RSS GiB':>13s} {'RSS/ckpt':>9s} {'(RSS-baseline)/ckpt':>20s}")
    base = None
    for step in CHILD:
        wall, rss = measure(step, paths)
        base = rss if base is None else base
        extra = "" if step == "baseline" else f"{(rss - base) / size:20.2f}"
        print(f"{step:10s} {wall:7.1f} {rss / 2**30:13.2f} {rss / size:9.2f} {extra:>20s}", flush=True)
    print(f"export tensors bitwise equal to the source: {tensors_equal(paths['SRC'], paths['BACK'])}")
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
