"""Training batches from a JSONL chat dataset: deterministic order, packed layout, static buckets, exact resume.

Letters: B examples per batch (this host), L token bucket, S response-slot bucket, P pixel rows per example.

Records: `bard_jax.data.jsonl_records.open_records` reads them from JSONL shards by byte offset when an example is
made, so a dataset of millions of samples costs a few bytes of index per record, not its text.

Order: grain's `MapDataset.range(n).shuffle(seed).repeat()` gives the example at every stream position; the
global batch k holds stream positions [k*G, (k+1)*G) and this host takes its contiguous slice. The stream position
is each example's global index (`example_index`), which keys its corruption, so a run is the same on any mesh and
after a resume; the iterator state is just the next batch number (plus the skip counters).

Shapes: each batch takes the smallest length, response and patch buckets that hold its largest example, so a batch
of small images carries few pixel rows and a batch without any image carries no `pixel_values` / `image_grid_thw`
at all (its step runs no vision tower). Each distinct set of shapes is its own compiled step. With several hosts,
"its largest example" is the largest of every host's slice: they agree before collating (`shape_agreement.py`).

Samples that cannot be used (unreadable image, no assistant turn, empty response, unknown content type, too long
for the largest bucket, malformed JSON) are skipped with a counted reason, or raise in strict mode; a skipped
example is replaced by the next stream position after the batch's own range, so batches stay full and
deterministic. The log gets the first skip of each reason (where and why) and then a summary of the counts at most
every `SKIP_SUMMARY_SECONDS`. When nothing is usable (every record fails since the last usable one, e.g. a wrong
image root) `next_batch()` raises a `DataError` that says why instead of searching forever. A `stop_event` that
is set makes a `next_batch()` in progress raise `StopRequested`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import dataclasses
import json
import logging
import multiprocessing
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from bard_jax.data.jsonl_records import JsonlRecords, ShardChanged
from bard_jax.data.processor import DataError, Processor
from bard_jax.data.shape_agreement import Interrupted, LocalShapes, ShapeAgreement
from bard_jax.diffusion.layout import LayoutError, collate_packed, drop_noisy_copy, pack_sample
from bard_jax.worker_exit import die_with_parent

log = logging.getLogger(__name__)

# After the first skip of each reason (logged with its example), the counts are logged at most this often. A time
# interval, not a count: it bounds the log to one line a minute however fast samples are skipped (a count-based
# interval floods when every sample fails and stays silent for hours when one in a million does).
SKIP_SUMMARY_SECONDS = 60.0


class StopRequested(Exception):
    """`next_batch()` gave up waiting for data because the stop event was set (the run is asked to end).

    Control flow, not an error: deliberately not a `BardError` (the training loop catches it, saves and exits)."""


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    global_batch_size: int = 8
    block_size: int = 4  # response padding / layout block size (1 for the AR objective)
    length_buckets: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096, 8192)
    response_buckets: tuple[int, ...] = (16, 64, 256, 1024, 4096)
    # The most pixel rows one example may carry (the largest patch bucket; see `largest_patch_bucket`): a sample
    # with more is skipped. Each batch takes the smallest patch bucket (of these and `patch_buckets`) that holds
    # its largest example, and a batch without an image carries no pixel rows at all.
    pixel_rows: int = 256
    patch_buckets: tuple[int, ...] = ()  # smaller patch buckets (those >= pixel_rows are not used)
    max_images: int = 2
    seed: int = 0
    shard_index: int = 0  # this host
    shard_count: int = 1
    strict: bool = False
    workers: int = 0  # processes that decode and pack examples (0: in the main process)
    noisy_copy: bool = True  # False: `[prefix | clean]` only (the AR objective)
    # The most videos one example may carry (0: samples with a video are skipped). Video pixel rows have the same
    # per-example limit `pixel_rows` as image rows, counted apart, and take their own bucket from the same ladder
    # (`patch_buckets`): a batch with a video carries `pixel_values_videos` [B, Q, C] next to any [B, P, C] images.
    max_videos: int = 1


def read_jsonl(path: str, strict: bool = False) -> tuple[list[dict], collections.Counter]:
    """(records, skip counts); a malformed line is skipped and counted (the first one logged), or raises if strict."""
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
                if not skipped["malformed json"]:
                    log.warning("%s:%d: skipped malformed sample (%s); further malformed lines are counted, not "
                                "logged one by one", path, lineno, e)
                skipped["malformed json"] += 1
                continue
            rec["_where"] = f"{path}:{lineno}"
            records.append(rec)
    if skipped["malformed json"] > 1:
        log.warning("%s: skipped %d malformed lines in all", path, skipped["malformed json"])
    return records, skipped


def max_record_bytes(tokenizer: Any, max_tokens: int) -> int:
    """The longest JSONL line a sample of at most `max_tokens` tokens can come from: each token at most the vocabulary's
    longest token in UTF-8 bytes (4 per character), each byte at most 6 characters once JSON-escaped (a \\u escape),
    plus 64 KiB for the message structure and image paths. Generous by design: a line it refuses cannot fit."""
    longest = max((len(t) for t in tokenizer.get_vocab()), default=1)
    return 6 * 4 * longest * max_tokens + (1 << 16)


def skip_reason(message: str) -> str:
    """The counted reason of a skip message: its text before any parenthesis, numbers replaced by N, so that the
    reasons form a small fixed set (one counter and one first example per kind of problem, not per length)."""
    if "cannot be read" in message:
        return "unreadable image"
    if "cannot be decoded" in message or "needs PyAV" in message:
        return "unreadable video"
    return re.sub(r"\d+", "N", message.split(" (")[0])


def _hint(reason: str, image_root: str) -> str:
    if reason == "unreadable image":
        return (f"check data.image_root: image paths in the JSONL are read relative to it (now {image_root!r}), "
                f"and the images must exist there")
    if "bucket" in reason:
        return "the samples are longer than the largest bucket: raise data.length_buckets / data.response_buckets"
    if reason == "unreadable video":
        return (f"check data.image_root: video paths in the JSONL are read relative to it (now {image_root!r}); "
                f"video files need PyAV (pip install av)")
    if "static limits" in reason:
        return ("the images or videos exceed the static limits: raise data.max_images / data.max_videos / "
                "data.patch_buckets or lower max_pixels")
    if "assistant" in reason or "empty response" in reason:
        return "every training sample needs a last assistant turn with a non-empty response"
    if "content type" in reason:
        return "training samples may hold text, image and video content parts only"
    return "see the first failing record"


# ---------------------------------------------------------------------------------------------- worker processes
_WORKER_STREAM: TrainStream | None = None


def _worker_init(records, processor_dir, min_pixels, max_pixels, cfg, image_root):
    global _WORKER_STREAM
    die_with_parent()
    proc = Processor.from_pretrained(processor_dir, min_pixels=min_pixels, max_pixels=max_pixels)
    _WORKER_STREAM = TrainStream(records, proc, dataclasses.replace(cfg, workers=0), image_root)


def _worker_attempt(job: tuple[int, int]) -> tuple[dict | None, str | None]:
    """`TrainStream.attempt` of (record index, position) in a worker process (skips are noted by the caller)."""
    return _WORKER_STREAM.attempt(*job)


class TrainStream:
    """next_batch() -> dict of numpy arrays for this host; get_state()/set_state() for exact resume.

    `records`: a `JsonlRecords` (`open_records`: the lines of JSONL shards, read when used) or a list of record
    dicts (small data, tests).

    With `cfg.workers > 0` examples are decoded and packed in spawned worker processes (the processor is reloaded
    there from `processor_dir`); the result does not depend on the number of workers. An exception in a worker is
    re-raised in the main process. Skips are counted and logged here, in the calling process.

    `stop_event` (the training loop's, set on SIGTERM): once set, `next_batch()` raises `StopRequested` instead of
    going on (it checks between examples, so within about one example's time); the stream's state stays that of
    the last finished batch.

    `shapes` (default: this host alone): how the hosts of a multi-process run agree on each batch's shapes before
    collating it (`shape_agreement.py`), so that every host's slice has the same buckets and the same keys.
    """

    def __init__(self, records: Sequence[dict], processor: Processor, cfg: PipelineConfig, image_root: str = "",
                 skipped: collections.Counter | None = None, processor_dir: str | None = None,
                 stop_event: threading.Event | None = None, shapes: ShapeAgreement | None = None):
        if not records:
            counts = f" ({_counts(skipped)})" if skipped else ""
            raise DataError(f"the dataset has no usable samples{counts}")
        if cfg.global_batch_size % cfg.shard_count:
            raise DataError(f"global batch {cfg.global_batch_size} not divisible by {cfg.shard_count} hosts")
        self.records = records
        self.proc = processor
        self.cfg = cfg
        self.root = image_root
        self.stop_event = stop_event
        self.shapes = shapes or LocalShapes()
        self._interrupted = threading.Event()  # set by interrupt(): a closing Prefetcher ends a hunt in progress
        self.order = grain.MapDataset.range(len(records)).shuffle(seed=cfg.seed).repeat()
        self.batch_number = 0
        self.skipped = collections.Counter(skipped or {})
        self._logged_reasons: set[str] = set()
        self._last_summary = time.monotonic()
        self._unsummarised = 0
        # The skips since the last usable sample: consecutive stream positions, and which records (the entries of
        # `_tried` equal to `_run`; a new run is a new number, so forgetting is O(1)) with their reasons.
        self._consecutive = 0
        self._run = 1
        self._tried: np.ndarray | None = None
        self._run_reasons: collections.Counter = collections.Counter()
        self._run_first: tuple[str, str] | None = None
        tok = processor.tokenizer
        self.pad_id = processor.im_end_id
        self.image_token_id = processor.image_pad_id
        self.video_token_id = tok.convert_tokens_to_ids("<|video_pad|>")
        self.patch_dim = 3 * processor.settings.temporal_patch_size * processor.settings.patch_size ** 2
        self.max_line_bytes = max_record_bytes(tok, max(cfg.length_buckets))
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

    def interrupt(self) -> None:
        """Make a `next_batch()` running on another thread raise `StopRequested` soon (for a closing Prefetcher);
        the stream is not used afterwards."""
        self._interrupted.set()
        waiting = getattr(self.shapes, "interrupted", None)
        if waiting is not None:  # a wait for the other hosts' shapes ends too
            waiting.set()

    def _check_stop(self) -> None:
        if self._interrupted.is_set() or (self.stop_event is not None and self.stop_event.is_set()):
            raise StopRequested("stop requested while preparing a training batch")

    def _attempts(self, jobs: list[tuple[int, int]]) -> list[tuple[dict | None, str | None]]:
        """`attempt` of each (record index, position), in order, in this process or the workers."""
        if self._pool is None:
            out = []
            for job in jobs:
                self._check_stop()
                out.append(self.attempt(*job))
            return out
        self._check_stop()
        try:
            return list(self._pool.map(_worker_attempt, jobs, chunksize=max(1, len(jobs) // 8)))
        except concurrent.futures.process.BrokenProcessPool as e:
            # A worker that died (or whose start-up failed: its traceback is in the log) must not hang the run.
            self.close()
            raise DataError(f"a data worker process died ({e}); see its traceback above") from e

    def where(self, record_index: int) -> str:
        """"file:line" of a record, without reading it when the records are read from shards."""
        if isinstance(self.records, JsonlRecords):
            return self.records.where(record_index)
        return self.records[record_index].get("_where", "?")

    # ------------------------------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        state = {"batch_number": self.batch_number, "skipped": dict(self.skipped), "records": len(self.records)}
        digest = getattr(self.records, "content_digest", None)
        if digest is not None:
            state["data_digest"] = digest()
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        # Stream positions name records through a permutation of len(records): other data (a shard added, lines
        # appended) would give other samples at the same positions, so such a resume is refused, not silently wrong.
        if "records" in state and int(state["records"]) != len(self.records):
            raise DataError(f"the training data changed since the checkpoint: it held {int(state['records'])} "
                            f"records, now {len(self.records)}; an exact resume needs the same data (start a new "
                            f"run to train on the new data)")
        digest = getattr(self.records, "content_digest", None)
        if "data_digest" in state and digest is not None and state["data_digest"] != digest():
            raise DataError(f"the training data changed since the checkpoint: the same {len(self.records)} records "
                            "in number, but other contents (a shard replaced or edited); an exact resume needs the "
                            "same data (start a new run to train on the new data)")
        self.batch_number = int(state["batch_number"])
        self.skipped = collections.Counter(state.get("skipped", {}))

    # ------------------------------------------------------------------------------------------ examples
    def attempt(self, record_index: int, position: int) -> tuple[dict[str, Any] | None, str | None]:
        """(packed sample, None) for a record at a stream position, or (None, why it cannot be used); raises a
        DataError naming the record in strict mode. Counts and logs nothing (see `example`)."""
        try:
            line_bytes = getattr(self.records, "line_bytes", None)
            if line_bytes is not None and line_bytes(record_index) > self.max_line_bytes:
                # Judged from the index before anything is read: a line this long cannot fit in any bucket, and
                # parsing and tokenising it would cost far more than the sample is worth (every pass).
                raise DataError(f"the record's line of {line_bytes(record_index)} bytes is longer than any sample "
                                f"of {max(self.cfg.length_buckets)} tokens can be (at most {self.max_line_bytes} "
                                "bytes)")
            rec = self.records[record_index]  # a JsonlRecords line is parsed here (MalformedRecord: a skip)
            enc = self.proc.encode_training_sample(rec["messages"], image_root=self.root)
            grid = enc.get("image_grid_thw", np.zeros((0, 3), np.int64))
            pixels = enc.get("pixel_values", np.zeros((0, self.patch_dim), np.float32))
            video_grid = enc.get("video_grid_thw", np.zeros((0, 3), np.int64))
            video_pixels = enc.get("pixel_values_videos", np.zeros((0, self.patch_dim), np.float32))
            if len(grid) > self.cfg.max_images or len(pixels) > self.cfg.pixel_rows:
                raise DataError(f"{len(grid)} images / {len(pixels)} pixel rows exceed the static limits "
                                f"({self.cfg.max_images} / {self.cfg.pixel_rows})")
            check_video_limits(len(video_grid), len(video_pixels), self.cfg)
            sample = pack_sample(
                enc["prefix_ids"], enc["response_ids"], self.cfg.block_size, pad_token_id=self.pad_id,
                image_token_id=self.image_token_id, video_token_id=self.video_token_id,
                spatial_merge_size=self.proc.settings.merge_size, image_grid_thw=grid if len(grid) else None,
                video_grid_thw=video_grid if len(video_grid) else None,
            )
            if not self.cfg.noisy_copy:
                sample = drop_noisy_copy(sample)
            if len(sample["input_ids"]) > max(self.cfg.length_buckets):
                raise DataError(f"packed length {len(sample['input_ids'])} exceeds the largest bucket")
            if int(sample["response_len"]) > max(self.cfg.response_buckets):
                raise DataError(f"response length {int(sample['response_len'])} exceeds the largest bucket")
        except ShardChanged:
            raise
        except (DataError, LayoutError) as e:
            if self.cfg.strict:
                raise DataError(f"{self.where(record_index)}: {e}") from e
            return None, str(e)
        sample["pixels"] = pixels
        sample["grid"] = grid
        sample["video_pixels"] = video_pixels
        sample["video_grid"] = video_grid
        sample["example_index"] = position
        return sample, None

    def example(self, position: int) -> dict[str, Any] | None:
        """The packed sample at a stream position, or None (skipped: reason counted and logged)."""
        record_index = self.order[position]
        sample, problem = self.attempt(record_index, position)
        return self._take(record_index, sample, problem)

    def _take(self, record_index: int, sample: dict | None, problem: str | None) -> dict | None:
        """Book one examined stream position: a usable sample ends the run of skips; a skip is counted, logged
        without flooding, and after a whole pass of them, checked for a dataset with nothing usable."""
        if sample is not None:
            if self._consecutive:
                self._start_new_run()
            return sample
        where = self.where(record_index)
        reason = skip_reason(problem)
        self.skipped[reason] += 1
        self._log_skip(reason, where, problem)
        if self._tried is None:
            self._tried = np.zeros(len(self.records), np.int64)
        if self._run_first is None:
            self._run_first = (where, problem)
        self._consecutive += 1
        if self._tried[record_index] != self._run:
            self._tried[record_index] = self._run
            self._run_reasons[reason] += 1
        if self._consecutive >= len(self.records):
            self._check_anything_usable()
        return None

    def _start_new_run(self) -> None:
        """A usable sample was found: forget the skips since the last one."""
        self._consecutive = 0
        self._run += 1
        self._run_reasons.clear()
        self._run_first = None

    def _log_skip(self, reason: str, where: str, problem: str) -> None:
        self._unsummarised += 1
        if reason not in self._logged_reasons:
            self._logged_reasons.add(reason)
            log.warning("%s: skipped (%s); further samples skipped for this reason are counted, and the counts "
                        "logged at most every %.0f s", where, problem, SKIP_SUMMARY_SECONDS)
            return
        now = time.monotonic()
        if now - self._last_summary >= SKIP_SUMMARY_SECONDS:
            log.warning("skipped %d samples in the last %.0f s; all skips so far: %s", self._unsummarised,
                        now - self._last_summary, _counts(self.skipped))
            self._last_summary, self._unsummarised = now, 0

    def _check_anything_usable(self) -> None:
        """After as many skipped positions in a row as there are records: try each record not yet tried since the
        last usable sample (stream positions do not visit every record in a window of that length, since every
        epoch has its own order and replacements come from elsewhere in the stream). One usable record means the
        data is fine and the skips were chance; none means every record fails, and the run cannot go on."""
        untried = np.flatnonzero(self._tried != self._run)
        chunk = max(1, 4 * self.cfg.workers)
        for i in range(0, len(untried), chunk):
            jobs = [(int(r), -1) for r in untried[i:i + chunk]]
            for (r, _), (sample, problem) in zip(jobs, self._attempts(jobs)):
                if sample is not None:  # a new run: checked again only after another pass of skips
                    self._start_new_run()
                    return
                self._tried[r] = self._run
                self._run_reasons[skip_reason(problem)] += 1
        reason = self._run_reasons.most_common(1)[0][0]
        where, problem = self._run_first
        raise DataError(
            f"no usable training sample: all {len(self.records)} records fail ({_counts(self._run_reasons)}) "
            f"after {self._consecutive} skipped stream positions in a row; first: {where}: {problem}. "
            f"Hint: {_hint(reason, self.root)}"
        )

    def next_batch(self) -> dict[str, np.ndarray]:
        g = self.cfg.global_batch_size
        local = g // self.cfg.shard_count
        start = self.batch_number * g + self.cfg.shard_index * local
        skipped_before = self.skipped.copy()
        try:
            samples = self._fill(start, local)
            batch = self.collate(samples, self.batch_number)
        except (StopRequested, Interrupted) as e:
            self.skipped = skipped_before  # this batch is redone after a resume: count its skips then
            if isinstance(e, Interrupted):
                raise StopRequested(str(e)) from None
            raise
        self.batch_number += 1
        return batch

    def _fill(self, start: int, local: int) -> list[dict]:
        positions = list(range(start, start + local))
        records = [self.order[p] for p in positions]
        found = self._attempts(list(zip(records, positions)))
        samples = [self._take(r, sample, problem) for r, (sample, problem) in zip(records, found)]
        # Replacements for skipped samples come from far beyond any batch's own range, in order: each usable one
        # fills the next empty slot. Asking for as many positions as slots are empty examines exactly the positions
        # a one-by-one search would (at most one usable sample per empty slot among them), in parallel in workers.
        spare = (self.batch_number + 1) * self.cfg.global_batch_size * 1000 + self.cfg.shard_index * local * 1000
        empty = [i for i, s in enumerate(samples) if s is None]
        while empty:
            positions = list(range(spare + 1, spare + 1 + len(empty)))
            spare += len(empty)
            records = [self.order[p] for p in positions]
            for r, (sample, problem) in zip(records, self._attempts(list(zip(records, positions)))):
                if self._take(r, sample, problem) is not None:
                    samples[empty.pop(0)] = sample
        return samples

    def collate(self, samples: list[dict], batch_number: int | None = None) -> dict[str, np.ndarray]:
        """This host's slice of a batch at the shapes the hosts agree on for `batch_number` (see `shapes`; one
        host: its own samples decide)."""
        needs = (max(len(s["input_ids"]) for s in samples), max(int(s["response_len"]) for s in samples),
                 max(len(s["pixels"]) for s in samples), max(len(s["video_pixels"]) for s in samples))
        length, response, image_rows, video_rows = self.shapes.maxima(
            self.batch_number if batch_number is None else batch_number, needs)
        bucket = next(b for b in self.cfg.length_buckets if b >= length)
        slots = next((b for b in self.cfg.response_buckets if b >= response), response)
        slots = -(-slots // self.cfg.block_size) * self.cfg.block_size  # whole blocks
        batch = collate_packed(samples, bucket, slots)
        batch.update(collate_images(samples, patch_buckets(self.cfg), self.cfg.max_images, self.patch_dim,
                                    rows=image_rows))
        batch.update(collate_videos(samples, patch_buckets(self.cfg), self.cfg.max_videos, self.patch_dim,
                                    rows=video_rows))
        batch["example_index"] = np.asarray([s["example_index"] for s in samples], np.int64)
        return batch


def patch_buckets(cfg: PipelineConfig) -> tuple[int, ...]:
    """The patch buckets a stream chooses from, ascending: `cfg.patch_buckets` below `cfg.pixel_rows`, then it."""
    return tuple(sorted({b for b in cfg.patch_buckets if b < cfg.pixel_rows} | {cfg.pixel_rows}))


def largest_patch_bucket(*, max_pixels: int, patch_size: int, merge_size: int, max_images: int,
                         max_length: int) -> int:
    """The most pixel rows a usable training sample can carry: `max_images` images at the processor's
    `max_pixels` each, and no more image tokens (rows / merge_size**2) than the longest length bucket holds.

    The resize keeps h * w <= max_pixels with h and w multiples of patch_size * merge_size, so an image has at
    most max_pixels // (patch_size * merge_size)**2 merged windows of merge_size**2 rows each.
    """
    windows = max_pixels // (patch_size * merge_size) ** 2
    return merge_size**2 * max(1, min(max_images * windows, max_length))


def collate_images(samples: list[dict], buckets: tuple[int, ...], max_images: int, patch_dim: int,
                   rows: int | None = None) -> dict[str, np.ndarray]:
    """`pixel_values` [B, P, C] and `image_grid_thw` [B, I, 3] (I = max_images) of a batch, P the smallest of
    `buckets` holding its largest example's rows (the rest zero rows, zero grid rows); nothing at all when no
    example has an image, so that the step runs no vision tower for a text-only batch. `rows`: the rows to hold
    instead of the largest example's (the hosts' agreed maximum: 0 means no image arrays, more than 0 means arrays
    even when these samples have no image)."""
    pixels, grid = _collate_kind([s["pixels"] for s in samples], [s["grid"] for s in samples], buckets, max_images,
                                 patch_dim, rows)
    return {} if pixels is None else {"pixel_values": pixels, "image_grid_thw": grid}


def _counts(counter: Mapping[str, int]) -> str:
    """'reason: count; ...', most frequent first."""
    return "; ".join(f"{k}: {v}" for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


# ---------------------------------------------------------------------------------------------- videos
def check_video_limits(videos: int, rows: int, cfg: PipelineConfig) -> None:
    """DataError (a counted skip) for a sample with more videos than `cfg.max_videos` or more video pixel rows than
    `cfg.pixel_rows`: the static shapes of `collate_videos` cannot hold it."""
    if videos > cfg.max_videos or rows > cfg.pixel_rows:
        raise DataError(f"{videos} videos / {rows} video pixel rows exceed the static limits (max_videos "
                        f"{cfg.max_videos} / {cfg.pixel_rows} pixel rows)")


def collate_videos(samples: list[dict], buckets: tuple[int, ...], max_videos: int, patch_dim: int,
                   rows: int | None = None) -> dict[str, np.ndarray]:
    """`pixel_values_videos` [B, Q, C] and `video_grid_thw` [B, J, 3] (J = max_videos), Q the smallest of `buckets`
    holding the batch's largest video rows; nothing at all when no example has a video (as `collate_images`).

    Row b holds its videos' rows in order (each video's temporal patches one after the other, as the processor
    gives them); `per_example_vision` packs them after row b's image rows, as the samplers do."""
    pixels, grid = _collate_kind([s["video_pixels"] for s in samples], [s["video_grid"] for s in samples], buckets,
                                 max_videos, patch_dim, rows)
    return {} if pixels is None else {"pixel_values_videos": pixels, "video_grid_thw": grid}


def _collate_kind(rows: list[np.ndarray], grids: list[np.ndarray], buckets: tuple[int, ...], slots: int,
                  patch_dim: int, need: int | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Each example's pixel rows [n_b, C] and grids [k_b, 3] of one kind padded to [B, P, C] (P the smallest bucket
    holding `need`, by default the largest n_b) and [B, slots, 3] with zeros; (None, None) when `need` is 0 (by
    default: when no example has one)."""
    if need is None:
        need = max(len(r) for r in rows) if any(len(g) for g in grids) else 0
    if need == 0:
        return None, None
    size = next(b for b in buckets if b >= need)  # a sample beyond the largest bucket was skipped before
    pixels = np.zeros((len(rows), size, patch_dim), np.float32)
    grid = np.zeros((len(rows), slots, 3), np.int32)
    for i, (r, g) in enumerate(zip(rows, grids)):
        pixels[i, : len(r)] = r
        grid[i, : len(g)] = g
    return pixels, grid
