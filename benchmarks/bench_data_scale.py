"""The training stream on a million-record JSONL: start-up time, peak memory, examples/s with 0 and 2 workers.

  python benchmarks/bench_data_scale.py [--records 1000000] [--shards 1] [--batches 30] [--batch 16] [--dir DIR]

Writes the dataset once (the synthetic task's images and tokenizer; each record a chat about one of its images,
with a distinct id, about 300 bytes a line), then measures each setting in a fresh Python process:

- start-up: from `open_records` to the first batch in hand. "cold" indexes the shards (no cached index), "warm"
  finds the index cached beside them (every later start of a run);
- memory: the process's peak resident set (`ru_maxrss`) minus its resident set after the imports (jax, grain,
  transformers' tokenizer, bard_jax), so the figure is what the dataset costs; with workers, the largest worker's
  peak is shown too;
- examples/s: `--batches` batches of `--batch` after the first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def write_dataset(out: str, records: int, shards: int) -> str:
    from bard_jax.data.synthetic import generate

    syn = os.path.join(out, "syn")
    if not os.path.isdir(syn):
        generate(syn, n=256, seed=0, n_eval=4)
    data = os.path.join(out, f"jsonl_{records}_{shards}")
    if os.path.isdir(data):
        return data
    base = [json.loads(ln) for ln in open(os.path.join(syn, "train.jsonl")) if ln.strip()]
    tmp = data + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    per = -(-records // shards)
    for s in range(shards):
        with open(os.path.join(tmp, f"part-{s:05d}.jsonl"), "w") as f:
            for i in range(s * per, min(records, (s + 1) * per)):
                rec = base[i % len(base)]
                f.write(json.dumps({"id": f"r{i:08d}", "source": "bench/scale", "messages": rec["messages"]}) + "\n")
    os.rename(tmp, data)
    return data


def measure(data: str, syn: str, workers: int, batches: int, batch: int) -> dict:
    """One setting, in this (fresh) process."""
    import jax  # noqa: F401  (the import baseline includes what a training process has loaded)

    from bard_jax.data import Processor
    from bard_jax.data.jsonl_records import open_records
    from bard_jax.data.pipeline import PipelineConfig, TrainStream

    proc = Processor.from_pretrained(syn)
    base = rss_mib()
    t0 = time.perf_counter()
    records = open_records(data)
    t_index = time.perf_counter() - t0
    cfg = PipelineConfig(global_batch_size=batch, block_size=4, length_buckets=(64, 128, 256), pixel_rows=32,
                         max_images=1, workers=workers)
    stream = TrainStream(records, proc, cfg, image_root=syn, processor_dir=os.path.join(syn, "tokenizer"))
    stream.next_batch()
    t_start = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(batches):
        stream.next_batch()
    rate = batches * batch / (time.perf_counter() - t1)
    stream.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if workers else 0.0
    return {"records": len(records), "index_s": t_index, "startup_s": t_start, "examples_per_s": rate,
            "baseline_mib": base, "peak_above_baseline_mib": peak - base, "worker_peak_mib": children}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "bard_jax_bench_data"))
    ap.add_argument("--child", nargs=2, metavar=("DATA", "WORKERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        data, workers = args.child[0], int(args.child[1])
        print(json.dumps(measure(data, os.path.join(args.dir, "syn"), workers, args.batches, args.batch)))
        return

    t0 = time.perf_counter()
    data = write_dataset(args.dir, args.records, args.shards)
    size = sum(os.path.getsize(os.path.join(data, f)) for f in os.listdir(data) if f.endswith(".jsonl"))
    print(f"dataset: {args.records} records in {args.shards} shard(s), {size / 2**20:.0f} MiB ({data}; "
          f"{time.perf_counter() - t0:.0f} s to have it)")
    index_dir = os.path.join(data, ".bard_index")
    if os.path.isdir(index_dir):  # the first setting measures a cold start
        for f in os.listdir(index_dir):
            os.unlink(os.path.join(index_dir, f))
    print(f"{'setting':>16s} {'index s':>8s} {'start-up s':>11s} {'peak RSS above imports MiB':>27s} "
          f"{'worker peak MiB':>16s} {'examples/s':>11s}")
    for name, workers in (("cold, 0 workers", 0), ("warm, 0 workers", 0), ("warm, 2 workers", 2)):
        cmd = [sys.executable, __file__, "--dir", args.dir, "--batches", str(args.batches), "--batch",
               str(args.batch), "--child", data, str(workers)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        assert r["records"] == args.records, r
        print(f"{name:>16s} {r['index_s']:8.2f} {r['startup_s']:11.2f} {r['peak_above_baseline_mib']:27.0f} "
              f"{r['worker_peak_mib']:16.0f} {r['examples_per_s']:11.1f}")


if __name__ == "__main__":
    main()
