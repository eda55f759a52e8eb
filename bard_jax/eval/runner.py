"""The `run` command: decode every document of each task, score it, append it to OUT/<task>/samples.jsonl, and
rebuild OUT/results.json / results.md after each task.

Order of work. Every cheap check comes first (task names, dataset files, OUT's earlier runs, the checkpoint
directory), so a mistake is reported before the weights load and before anything is written. Documents are read in
windows of WINDOW_BATCHES batches; a window's documents are sorted by prompt size (image tokens + text tokens) and
cut into batches, so a batch pads little without the whole split's images in memory. Documents already in
samples.jsonl are skipped *before* the window is cut: batches finish in order, so what an interrupted run did is a
run of whole batches at the head of a window, and the rerun cuts the rest of the window into the same batches as
an uninterrupted run would have.

A document whose images cannot be decoded or encoded is not decoded: it is written with prediction "" (scored as
wrong by its scorer) and its reason under `error`, and counted as undecodable.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from bard_jax.errors import BardError
from bard_jax.eval import decode
from bard_jax.eval.data import check_split, read_docs, split_files, text_fields
from bard_jax.eval.errors import EvalError
from bard_jax.eval.prompts import answer_text, chat_messages, special_ids
from bard_jax.eval.results import write_results
from bard_jax.eval.samples import SamplesWriter, read_samples
from bard_jax.eval.settings import SAMPLES_FILE, RunSettings, check_resumable, check_same_model, write_run_file
from bard_jax.eval.task import Task
from bard_jax.hf.digest import weights_digest

WINDOW_BATCHES = 16  # batches per sorting window: enough to group similar prompts, few images held at once


@dataclasses.dataclass
class Pending:
    """A document waiting in a window: its row, decoded images, prompt text and size (the sort key)."""

    doc_id: int
    doc: dict
    images: list[Any]
    text: str
    size: int


@dataclasses.dataclass
class TaskContext:
    """What decoding one task needs: the model, processor, decoder settings and special ids."""

    task: Task
    model: Any
    processor: Any
    config: Any
    mask_id: int | None
    eos_id: int
    warmup: bool = False  # decode each new batch shape once untimed first, so `seconds` excludes compilation
    seen_shapes: set = dataclasses.field(default_factory=set)


def _windows(docs: Iterable[tuple[int, dict]], size: int) -> Iterator[list[tuple[int, dict]]]:
    it = iter(docs)
    while window := list(itertools.islice(it, size)):
        yield window


def _chunks(items: list[Pending], size: int) -> Iterator[list[Pending]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def count_docs(root: str, task: Task, limit: int | None) -> int | None:
    """Rows of the split from the parquet footers (nothing else read), capped at `limit`; None if unknown."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        total = sum(pq.ParquetFile(path).metadata.num_rows for path in split_files(root, task))
    except (OSError, pa.ArrowException):
        return None  # read_docs reports the unreadable file when it gets there
    return total if limit is None else min(total, limit)


def prompt_size(processor: Any, images: list[Any], text: str) -> int:
    """Image tokens (from the resized sizes, without processing pixels) plus the text's tokens: the sort key."""
    from bard_jax.data.image import smart_resize

    s = processor.settings
    unit = s.factor**2
    tokens = 0
    for im in images:
        h, w = smart_resize(im.height, im.width, s.factor, s.min_pixels, s.max_pixels)
        tokens += h * w // unit
    return tokens + len(processor.tokenizer.encode(text, add_special_tokens=False))


def sample_line(task: Task, doc_id: int, doc: dict, prediction: str, decoded: decode.Decoded | None,
                seconds: float, error: str | None) -> dict[str, Any]:
    """One samples.jsonl line: the prediction, the target, the scorer's record and the decode statistics."""
    from bard_jax.eval.scoring import SCORERS

    return {
        "doc_id": doc_id,
        "prediction": prediction,
        "target": task.target(doc),
        "record": SCORERS[task.name].process(text_fields(doc), prediction),
        "nfe": None if decoded is None else decoded.nfe,
        "generated_tokens": None if decoded is None else decoded.generated_tokens,
        "tokens_per_forward": None if decoded is None else decoded.tokens_per_forward,
        "denoising_forwards": None if decoded is None else decoded.denoising_forwards,
        "seconds": round(seconds, 4),
        "error": error,
    }


def decode_chunk(ctx: TaskContext, chunk: list[Pending]) -> list[dict[str, Any]]:
    """Encode, decode, clean and score one batch; returns its samples lines (in the chunk's order)."""
    encoded, failed = [], {}
    for p in chunk:
        try:
            encoded.append((p, ctx.processor.encode_chat(chat_messages(p.images, p.text, ctx.task.system))))
        except BardError as e:  # e.g. an image the processor refuses (aspect ratio above 200)
            failed[p.doc_id] = f"{ctx.task.name}: the images cannot be encoded: {e}"
    pad_id = ctx.processor.im_end_id  # any id: padded columns are masked out
    encodings = [e for _, e in encoded]
    if ctx.warmup and encodings:
        shape = (len(encodings), decode.prompt_bucket(max(e["input_ids"].shape[1] for e in encodings)),
                 tuple(len(e.get("pixel_values", ())) for e in encodings))
        if shape not in ctx.seen_shapes:
            ctx.seen_shapes.add(shape)
            decode.decode_batch(ctx.model, encodings, ctx.config, pad_id)  # compiles; not timed
    t0 = time.perf_counter()
    outs = decode.decode_batch(ctx.model, encodings, ctx.config, pad_id) if encoded else []
    share = (time.perf_counter() - t0) / len(chunk)  # decode_batch returns host arrays: the work is done
    tok = ctx.processor.tokenizer
    answers = {p.doc_id: (answer_text(d.tokens, tok, eos_id=ctx.eos_id, mask_id=ctx.mask_id), d)
               for (p, _), d in zip(encoded, outs)}
    lines = []
    for p in chunk:
        prediction, decoded = answers.get(p.doc_id, ("", None))
        lines.append(sample_line(ctx.task, p.doc_id, p.doc, prediction, decoded, share, failed.get(p.doc_id)))
    return lines


def run_task(ctx: TaskContext, root: str, out: str, settings: dict[str, Any], batch_size: int,
             limit: int | None) -> None:
    """Decode the task's documents not yet in OUT/<task>/samples.jsonl, appending as batches finish."""
    from tqdm import tqdm

    task = ctx.task
    task_dir = os.path.join(out, task.name)
    path = os.path.join(task_dir, SAMPLES_FILE)
    done = {line["doc_id"] for line in read_samples(path, repair=True)}
    write_run_file(task_dir, settings, limit, complete=False)
    total = count_docs(root, task, limit)
    initial = len(done) if total is None else len([d for d in done if d < total])
    with tqdm(total=total, initial=initial, desc=task.name, unit="doc", file=sys.stderr, dynamic_ncols=True) as bar, \
            SamplesWriter(path) as writer:
        for window in _windows(read_docs(root, task, limit), batch_size * WINDOW_BATCHES):
            pending, unusable = [], []
            for doc_id, doc in window:
                if doc_id in done:
                    continue
                try:
                    images, text = task.visuals(doc), task.prompt(doc)
                    pending.append(Pending(doc_id, doc, images, text, prompt_size(ctx.processor, images, text)))
                except BardError as e:  # an undecodable image (EvalError) or one the resize refuses
                    unusable.append(sample_line(task, doc_id, doc, "", None, 0.0, str(e)))
            if unusable:
                writer.write(unusable)
                bar.update(len(unusable))
            pending.sort(key=lambda p: (p.size, p.doc_id))
            for chunk in _chunks(pending, batch_size):
                writer.write(decode_chunk(ctx, chunk))
                bar.update(len(chunk))
    write_run_file(task_dir, settings, limit, complete=True)


def check_inputs(settings: RunSettings, root: str, tasks: list[Task], out: str) -> dict[str, dict[str, Any]]:
    """Everything that can be checked before the weights load; returns each task's recorded settings."""
    from bard_jax import hf

    if not os.path.isdir(root):
        raise EvalError(f"--data-root: directory not found: {root}")
    for task in tasks:
        files = split_files(root, task)  # names the expected directory / files when the dataset is missing
        check_split(root, task)  # columns and their types, from the files' footers
        if count_docs(root, task, None) == 0:  # a score over no document would read as a real 0
            raise EvalError(f"task {task.name}: its split holds no documents ({', '.join(files)})")
    if os.path.exists(out) and not os.path.isdir(out):
        raise EvalError(f"--out {out} exists and is not a directory")
    try:
        hf.check_weights_dir(settings.model)
    except BardError as e:
        raise EvalError(f"--model: {e}") from None
    digest = weights_digest(settings.model)  # a resume needs the same weights, not only the same path
    per_task = {}
    for task in tasks:
        per_task[task.name] = settings.for_task(task.max_new_tokens, digest)
        decode.decoder_config(per_task[task.name], mask_id=1, eos_id=0)  # a bad setting fails before the weights
    check_same_model(out, next(iter(per_task.values())))
    for task in tasks:
        check_resumable(os.path.join(out, task.name), per_task[task.name])
        read_samples(os.path.join(out, task.name, SAMPLES_FILE))  # a corrupt line is named before the weights load
    return per_task


def run(settings: RunSettings, root: str, task_names: list[str], out: str, *, batch_size: int = 1,
        limit: int | None = None, model: Any = None, processor: Any = None,
        warmup: bool = False) -> dict[str, dict[str, Any]]:
    """Evaluate `settings.model` on the tasks; returns the summaries written to OUT/results.json.

    In-process callers (the Mini-BARD study, which evaluates one model under several settings) may pass the loaded
    `model` (a `bj.Model` of `settings.model`'s weights) and its `processor`; `warmup` decodes each new batch shape
    once before the timed call, so the samples' `seconds` exclude compilation."""
    from bard_jax.eval.tasks import get_task

    tasks = [get_task(name) for name in dict.fromkeys(task_names)]
    per_task = check_inputs(settings, root, tasks, out)

    import bard_jax as bj
    from bard_jax.data import Processor

    if processor is None:
        processor = Processor.from_pretrained(settings.model, min_pixels=settings.min_pixels,
                                              max_pixels=settings.max_pixels)
    mask_id, eos_id = special_ids(processor)
    if model is None:
        model = bj.load_pretrained(settings.model, dtype=settings.dtype)
    summaries: dict[str, dict[str, Any]] = {}
    for task in tasks:
        config = decode.decoder_config(per_task[task.name], mask_id, eos_id)
        ctx = TaskContext(task, model, processor, config, mask_id if settings.decoder == "diffusion" else None,
                          eos_id, warmup=warmup)
        run_task(ctx, root, out, per_task[task.name], batch_size, limit)
        summaries = write_results(out)
    return summaries
