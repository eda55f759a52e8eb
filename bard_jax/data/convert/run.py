"""`convert()`: plan the shards, convert the unfinished ones (in this process or a pool), then write stats.json.

Each shard is converted by `convert_shard` alone, from its own file and cap, into its own output files; nothing
is shared between shards, so the output does not depend on the number of workers or the order they finish in.
Workers are spawned processes (not forked: the caller may have threads); they send the rows they have read to
the progress bar through a queue.

A shard that cannot be read fails on its own: its partial output is removed, the failure is logged and recorded
(stats.json lists it), the other shards convert, and a rerun retries it. Any other exception (a full disk, an
interrupt, a bug) stops the conversion and leaves the shard partial, to be redone by the next run.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import dataclasses
import logging
import multiprocessing
import os
import queue
import sys
from collections.abc import Callable, Iterator
from typing import Any

from tqdm import tqdm

from bard_jax.data.convert.conversation import RowDropped
from bard_jax.data.convert.errors import ConvertError
from bard_jax.data.convert.manifest import (
    MANIFEST,
    STATS,
    check_claim,
    collect_stats,
    manifest_of,
    write_manifest,
    write_stats,
)
from bard_jax.data.convert.output import (
    IMAGE_FORMATS,
    TMP,
    ShardWriter,
    failed_path,
    finished_counts,
    json_bytes,
    write_if_changed,
)
from bard_jax.data.convert.plan import find_shards, read_metadata, shard_caps, source_named
from bard_jax.data.convert.source import RowContext, Shard, ShardUnreadable
from bard_jax.data.processor import DataError
from bard_jax.worker_exit import die_with_parent

log = logging.getLogger(__name__)

# How often (seconds) the main process looks at the progress queue while waiting for workers.
POLL_SECONDS = 0.2


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """Everything needed to convert one shard (picklable: it is sent to worker processes)."""

    source: str
    shard: Shard
    cap: int
    out: str
    search_dirs: tuple[str, ...]
    system: str
    image_format: str


def convert_shard(job: ShardJob, report: Callable[[int], None]) -> dict[str, Any]:
    """Convert one shard and commit it; its counts. Raises `ShardUnreadable` (after removing what it wrote)."""
    source = source_named(job.source)
    shard = job.shard
    tag = f"{source.name}/{shard.subset}" if shard.subset else source.name
    ctx = RowContext(source_tag=tag, shard=shard, search_dirs=job.search_dirs, system=job.system)
    writer = ShardWriter(job.out, shard.name, job.image_format)
    try:
        index = 0
        for rows in source.reader.batches(shard.path, list(shard.columns), job.cap):
            for row in rows:
                try:
                    sample = source.to_sample(row, index, ctx)
                except RowDropped as d:
                    writer.drop(d.reason)
                else:
                    writer.add(sample, index, tag)
                index += 1
            report(len(rows))
    except ShardUnreadable:
        writer.abort()
        raise
    except BaseException:
        writer.file.close()  # the partial output stays: the next run redoes this shard
        raise
    return writer.commit({"shard": shard.name, "source": tag, "source_bytes": shard.size})


# ------------------------------------------------------------------------------------------------ worker processes
_PROGRESS: Any = None


def _worker_init(progress_queue: Any) -> None:
    global _PROGRESS
    die_with_parent()  # a killed converter must not leave workers writing shards nobody will commit
    _PROGRESS = progress_queue


def _convert_in_worker(job: ShardJob) -> tuple[dict[str, Any] | None, str | None]:
    """(counts, None) or (None, why the shard is unreadable); other exceptions travel to the main process."""
    try:
        return convert_shard(job, _PROGRESS.put), None
    except ShardUnreadable as e:
        return None, str(e)


def _drain(progress_queue: Any, update: Callable[[int], None]) -> None:
    while True:
        try:
            update(progress_queue.get_nowait())
        except queue.Empty:
            return


def _outcomes(jobs: list[ShardJob], workers: int, update: Callable[[int], None]
              ) -> Iterator[tuple[ShardJob, dict[str, Any] | None, str | None]]:
    """(job, counts, failure) for every job, as they finish."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            try:
                yield job, convert_shard(job, update), None
            except ShardUnreadable as e:
                yield job, None, str(e)
        return
    ctx = multiprocessing.get_context("spawn")
    progress_queue = ctx.Queue()
    pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx,
                                                  initializer=_worker_init, initargs=(progress_queue,))
    try:
        futures = {pool.submit(_convert_in_worker, job): job for job in jobs}
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(pending, POLL_SECONDS, concurrent.futures.FIRST_COMPLETED)
            _drain(progress_queue, update)
            for future in done:
                try:
                    counts, failure = future.result()
                except concurrent.futures.process.BrokenProcessPool as e:
                    raise DataError(f"a conversion worker process died ({e}), perhaps out of memory: rerun with "
                                    f"fewer --workers; finished shards are kept") from e
                yield futures[future], counts, failure
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _drain(progress_queue, update)


# ------------------------------------------------------------------------------------------------ the conversion
def _options(has_subsets: bool, shards: list[Shard], limit: int | None, system: str,
             image_format: str) -> dict[str, Any]:
    """The options that change the output (recorded in convert.json)."""
    spread = sorted({s.subset for s in shards}) if has_subsets else None
    return {"image_format": image_format, "system": system,
            "limit": None if limit is None else {"rows": limit, "subsets": spread}}


def _record_failure(out: str, shard: Shard, error: str) -> None:
    log.warning("%s: shard failed, the others go on (a rerun retries it): %s", shard.path, error)
    write_if_changed(failed_path(out, shard.name), json_bytes({"path": shard.path, "error": error}))


def convert(source: str, src: str, out: str, subsets: list[str] | None = None, workers: int = 0,
            limit: int | None = None, system: str | None = None, image_format: str = "jpeg",
            image_root: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Convert `src` (a download of `source`) into training JSONL under `out`; returns stats.json's content.

    `system`: the system message (None: the source's default, "" for none); `image_root`: where relative image
    and video paths are looked for (default `src`); `progress`: a progress bar on stderr."""
    spec = source_named(source)
    if image_format not in IMAGE_FORMATS:
        raise ConvertError(f"unknown image format {image_format!r}; one of: {', '.join(IMAGE_FORMATS)}")
    if limit is not None and limit < 0:
        raise ConvertError(f"--limit must be >= 0, got {limit}")
    if workers < 0:
        raise ConvertError(f"--workers must be >= 0, got {workers}")
    if image_root is not None and not os.path.isdir(image_root):
        raise ConvertError(f"--image-root {image_root} is not a directory")
    system = spec.default_system if system is None else system
    src, out = os.path.abspath(src), os.path.abspath(out)
    image_root = os.path.abspath(image_root) if image_root is not None else src

    shards = find_shards(spec, src, subsets)
    manifest = manifest_of(spec.name, _options(spec.has_subsets, shards, limit, system, image_format))
    check_claim(out, manifest)
    shards = [read_metadata(spec, s) for s in shards]
    caps = shard_caps(shards, limit)
    write_manifest(out, manifest)
    for name in (MANIFEST, STATS):  # what a run killed while writing them left
        if os.path.exists(os.path.join(out, name + TMP)):
            os.unlink(os.path.join(out, name + TMP))

    jobs, done_rows = [], 0
    for shard, cap in zip(shards, caps):
        if cap is None and shard.error is None:
            continue  # beyond the limit
        counts = finished_counts(out, shard.name, shard.size)
        if counts is not None:
            done_rows += counts["rows"]
        elif shard.error is not None:
            _record_failure(out, shard, shard.error)
        else:
            dirs = (os.path.dirname(shard.path), image_root) if spec.paths_from_shard_dir else (image_root,)
            jobs.append(ShardJob(source=spec.name, shard=shard, cap=cap, out=out, search_dirs=dirs, system=system,
                                 image_format=image_format))

    total = sum(cap or 0 for cap in caps)
    with tqdm(total=total, initial=done_rows, unit="row", desc=spec.name, file=sys.stderr,
              disable=not progress, dynamic_ncols=True) as bar:
        for job, _, failure in _outcomes(jobs, workers, bar.update):
            if failure is not None:
                _record_failure(out, job.shard, failure)
            elif os.path.exists(failed_path(out, job.shard.name)):
                os.unlink(failed_path(out, job.shard.name))

    stats = collect_stats(out, spec.name)
    write_stats(out, stats)
    return stats
