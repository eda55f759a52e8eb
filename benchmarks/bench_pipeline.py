"""Data pipeline throughput on the synthetic set: examples/s with 0, 1 and 2 worker processes.

  python benchmarks/bench_pipeline.py [--n 2000] [--batches 40] [--batch 16]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from bard_jax.data import Processor
from bard_jax.data.pipeline import PipelineConfig, TrainStream, read_jsonl
from bard_jax.data.synthetic import generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    root = generate(os.path.join(tempfile.mkdtemp(), "syn"), n=args.n, seed=0, n_eval=10)
    proc = Processor.from_pretrained(root)
    records, _ = read_jsonl(os.path.join(root, "train.jsonl"))
    print(f"synthetic set: {len(records)} samples; {args.batches} batches of {args.batch}")
    print(f"{'workers':>8s} {'examples/s':>11s} {'distinct batch shapes':>22s}")
    for workers in (0, 1, 2):
        cfg = PipelineConfig(global_batch_size=args.batch, block_size=4, length_buckets=(64, 128, 256),
                             pixel_rows=32, max_images=1, workers=workers)
        s = TrainStream(records, proc, cfg, image_root=root, processor_dir=os.path.join(root, "tokenizer"))
        s.next_batch()  # start-up (worker spawn) not counted
        shapes = set()
        t0 = time.perf_counter()
        for _ in range(args.batches):
            b = s.next_batch()
            shapes.add((b["input_ids"].shape, b["noisy_index"].shape))
        rate = args.batches * args.batch / (time.perf_counter() - t0)
        s.close()
        print(f"{workers:8d} {rate:11.1f} {len(shapes):22d}")


if __name__ == "__main__":
    main()
