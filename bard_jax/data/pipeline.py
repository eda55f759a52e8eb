"""Training batches from a JSONL chat dataset: deterministic order, packed layout, static buckets, exact resume.

Letters: B examples per batch (this host), L token bucket, S response-slot bucket, P pixel rows per example.

Order: grain's `MapDataset.range(n).shuffle(seed).repeat()` gives the example at every stream position; the
global batch k holds stream positions [k*G, (k+1)*G) and this host takes its contiguous slice. The stream position
is each example's global index (`example_index`), which keys its corruption, so a run is the same on any mesh and
after a resume; the iterator state is just the next batch number (plus the skip counters).

Samples that cannot be used (unreadable image, no assistant turn, empty response, unknown content type, too long
for the largest bucket, malformed JSON) are skipped with a counted, logged reason, or raise in strict mode; a
skipped example is replaced by the next stream position after the batch's own range, so batches stay full and
deterministic.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import dataclasses
import json
import logging
import multiprocessing
from typing import Any

import grain
import numpy as np

from bard_jax.data.processor import DataError, Processor
from bard_jax.diffusion.layout import LayoutError, collate_packed, drop_noisy_copy, pack_sample

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    global_batch_size: int = 8
    block_size: int = 4  # response padding / layout block size (1 for the AR objective)
    length_buckets: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096, 8192)
    response_buckets: tuple[int, ...] = (16, 64, 256, 1024, 4096)
    pixel_rows: int = 256  # per-example pixel rows (static); images beyond are an error for that sample
    max_images: int = 2
    seed: int = 0
    shard_index: int = 0  # this host
    shard_count: int = 1
    strict: bool = False
    workers: int = 0  # processes that decode and pack examples (0: in the main process)
    noisy_copy: bool = True  # False: `[prefix | clean]` only (the AR objective)


def read_jsonl(path: str, strict: bool = False) -> tuple[list[dict], collections.Counter]:
    records, skipped = [], collections.Counter()
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list):
                    raise ValueError("no 'messages' list")
            except ValueError as e:
                if strict:
                    raise DataError(f"{path}:{lineno}: malformed sample ({e})") from e
                skipped["malformed json"] += 1
                log.warning("%s:%d: skipped malformed sample (%s)", path, lineno, e)
                continue
            rec["_where"] = f"{path}:{lineno}"
            records.append(rec)
    return records, skipped


_WORKER_STREAM: TrainStream | None = None


def _worker_init(records, processor_dir, min_pixels, max_pixels, cfg, image_root):
    global _WORKER_STREAM
    proc = Processor.from_pretrained(processor_dir, min_pixels=min_pixels, max_pixels=max_pixels)
    _WORKER_STREAM = TrainStream(records, proc, dataclasses.replace(cfg, workers=0), image_root)


def _worker_example(position: int) -> tuple[dict | None, dict]:
    """(packed sample or None, skip counts it added) for one stream position, in a worker process."""
    _WORKER_STREAM.skipped.clear()
    return _WORKER_STREAM.example(position), dict(_WORKER_STREAM.skipped)


class TrainStream:
    """next_batch() -> dict of numpy arrays for this host; get_state()/set_state() for exact resume.

    With `cfg.workers > 0` examples are decoded and packed in spawned worker processes (the processor is reloaded
    there from `processor_dir`); the result does not depend on the number of workers. An exception in a worker is
    re-raised in the main process.
    """

    def __init__(self, records: list[dict], processor: Processor, cfg: PipelineConfig, image_root: str = "",
                 skipped: collections.Counter | None = None, processor_dir: str | None = None):
        if not records:
            raise DataError("the dataset has no usable samples")
        if cfg.global_batch_size % cfg.shard_count:
            raise DataError(f"global batch {cfg.global_batch_size} not divisible by {cfg.shard_count} hosts")
        self.records = records
        self.proc = processor
        self.cfg = cfg
        self.root = image_root
        self.order = grain.MapDataset.range(len(records)).shuffle(seed=cfg.seed).repeat()
        self.batch_number = 0
        self.skipped = collections.Counter(skipped or {})
        tok = processor.tokenizer
        self.pad_id = processor.im_end_id
        self.image_token_id = processor.image_pad_id
        self.video_token_id = tok.convert_tokens_to_ids("<|video_pad|>")
        self.patch_dim = 3 * processor.settings.temporal_patch_size * processor.settings.patch_size ** 2
        self._pool = None
        if cfg.workers > 0:
            if not processor_dir:
                raise DataError("worker processes need processor_dir to reload the processor")
            st = processor.settings
            self._pool = concurrent.futures.ProcessPoolExecutor(
                cfg.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                initargs=(records, processor_dir, st.min_pixels, st.max_pixels, cfg, image_root),
            )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def _examples(self, positions: list[int]) -> list[dict | None]:
        if self._pool is None:
            return [self.example(p) for p in positions]
        out = []
        try:
            for sample, skipped in self._pool.map(_worker_example, positions,
                                                  chunksize=max(1, len(positions) // 8)):
                self.skipped.update(skipped)
                out.append(sample)
        except concurrent.futures.process.BrokenProcessPool as e:
            # A worker that died (or whose start-up failed: its traceback is in the log) must not hang the run.
            self.close()
            raise DataError(f"a data worker process died ({e}); see its traceback above") from e
        return out

    # ------------------------------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        return {"batch_number": self.batch_number, "skipped": dict(self.skipped)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.batch_number = int(state["batch_number"])
        self.skipped = collections.Counter(state.get("skipped", {}))

    # ------------------------------------------------------------------------------------------ examples
    def example(self, position: int) -> dict[str, Any] | None:
        """The packed sample at a stream position, or None (skipped, reason counted)."""
        rec = self.records[self.order[position]]
        try:
            enc = self.proc.encode_training_sample(rec["messages"], image_root=self.root)
            grid = enc.get("image_grid_thw", np.zeros((0, 3), np.int64))
            pixels = enc.get("pixel_values", np.zeros((0, self.patch_dim), np.float32))
            if "video_grid_thw" in enc:
                raise DataError("videos are not supported in training batches (images only)")
            if len(grid) > self.cfg.max_images or len(pixels) > self.cfg.pixel_rows:
                raise DataError(f"{len(grid)} images / {len(pixels)} pixel rows exceed the static limits "
                                f"({self.cfg.max_images} / {self.cfg.pixel_rows})")
            sample = pack_sample(
                enc["prefix_ids"], enc["response_ids"], self.cfg.block_size, pad_token_id=self.pad_id,
                image_token_id=self.image_token_id, video_token_id=self.video_token_id,
                spatial_merge_size=self.proc.settings.merge_size, image_grid_thw=grid if len(grid) else None,
            )
            if not self.cfg.noisy_copy:
                sample = drop_noisy_copy(sample)
            if len(sample["input_ids"]) > max(self.cfg.length_buckets):
                raise DataError(f"packed length {len(sample['input_ids'])} exceeds the largest bucket")
            if int(sample["response_len"]) > max(self.cfg.response_buckets):
                raise DataError(f"response length {int(sample['response_len'])} exceeds the largest bucket")
        except (DataError, LayoutError) as e:
            if self.cfg.strict:
                raise DataError(f"{rec.get('_where', '?')}: {e}") from e
            reason = str(e).split(" (")[0] if "cannot be read" not in str(e) else "unreadable image"
            self.skipped[reason] += 1
            log.warning("%s: skipped (%s)", rec.get("_where", "?"), e)
            return None
        sample["pixels"] = pixels
        sample["grid"] = grid
        sample["example_index"] = position
        return sample

    def next_batch(self) -> dict[str, np.ndarray]:
        g = self.cfg.global_batch_size
        local = g // self.cfg.shard_count
        start = self.batch_number * g + self.cfg.shard_index * local
        samples = self._examples(list(range(start, start + local)))
        # Replacements for skipped samples come from far beyond any batch's own range, in order.
        spare = (self.batch_number + 1) * g * 1000 + self.cfg.shard_index * local * 1000
        for i, s in enumerate(samples):
            while s is None:
                spare += 1
                s = self._examples([spare])[0]
            samples[i] = s
        self.batch_number += 1
        return self.collate(samples)

    def collate(self, samples: list[dict]) -> dict[str, np.ndarray]:
        length = max(len(s["input_ids"]) for s in samples)
        bucket = next(b for b in self.cfg.length_buckets if b >= length)
        r = max(int(s["response_len"]) for s in samples)
        slots = next((b for b in self.cfg.response_buckets if b >= r), r)
        slots = -(-slots // self.cfg.block_size) * self.cfg.block_size  # whole blocks
        batch = collate_packed(samples, bucket, slots)
        n = len(samples)
        batch["pixel_values"] = np.zeros((n, self.cfg.pixel_rows, self.patch_dim), np.float32)
        batch["image_grid_thw"] = np.zeros((n, self.cfg.max_images, 3), np.int32)
        for i, s in enumerate(samples):
            batch["pixel_values"][i, : len(s["pixels"])] = s["pixels"]
            batch["image_grid_thw"][i, : len(s["grid"])] = s["grid"]
        batch["example_index"] = np.asarray([s["example_index"] for s in samples], np.int64)
        return batch
