"""Mini-BARD evaluation: the held-out synthetic questions through the benchmark runner, and the study's metrics.

Every model and decoding setting is evaluated by `bard_jax.eval.runner.run` on its `synthetic` task (the same path
as the paper's benchmarks: prompts, batching by shape, decoding with `bj.generate` or the AR decoder, answers cut at
the first EOS, per-document samples), into WORKDIR/eval/<name>/synthetic/samples.jsonl. The runner warms each batch
shape up before timing it, so times exclude compilation and include everything else (prefill, denoising, commits,
padding rows).

The held-out questions are decoded as two sets, short answers and long ones (`scoring.synthetic.is_long`), each
batched on its own, so that the wall-clock figures of long answers are not mixed with those of short ones.

Metrics per setting, read back from the samples, overall and for each set: exact match (the answer and nothing else
before the EOS), token accuracy (the answer's tokens and its end, equal at their position) and field accuracy (the
structured answer's fields, entry by entry; `bard_jax.eval.scoring.synthetic`), also per question type; NFE per
question (forwards of the model including the prefill); tokens per denoising forward (tokens up to and including the
EOS over denoising forwards, summed over questions); tokens per second (the same tokens over decode wall time).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

import bard_jax as bj
from bard_jax.data import Processor
from bard_jax.eval.runner import run
from bard_jax.eval.samples import read_samples
from bard_jax.eval.scoring import synthetic
from bard_jax.eval.settings import SAMPLES_FILE, RunSettings

TASK = "synthetic"


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """The held-out questions of a synthetic task directory (`limit`: the first N only) and where results go."""

    data_dir: str
    out_dir: str
    limit: int | None
    processor: Processor
    size: int

    @property
    def mask_token_id(self) -> int:
        return self.processor.mask_id()

    @property
    def eos_token_id(self) -> int:
        return self.processor.im_end_id


def load_eval_set(data_dir: str, out_dir: str, limit: int = 0) -> EvalSet:
    """The task's eval.jsonl (scenes never used for training); results under `out_dir`."""
    with open(os.path.join(data_dir, "eval.jsonl")) as f:
        n = sum(1 for line in f if line.strip())
    size = min(n, limit) if limit else n
    processor = Processor.from_pretrained(os.path.join(data_dir, "tokenizer"))
    return EvalSet(data_dir, out_dir, limit or None, processor, size)


LENGTHS = ("short", "long")


def load_eval_sets(data_dir: str, out_dir: str, limit: int = 0) -> dict[str, EvalSet]:
    """The task's held-out questions (the first `limit` when given) split into short and long answers: each set is
    an eval.jsonl under OUT_DIR/sets/<length>/ beside a link to the task's images, decoded on its own."""
    with open(os.path.join(data_dir, "eval.jsonl")) as f:
        lines = [line for line in f if line.strip()]
    lines = lines[:limit] if limit else lines
    processor = Processor.from_pretrained(os.path.join(data_dir, "tokenizer"))
    out = {}
    for length in LENGTHS:
        chosen = [line for line in lines if synthetic.is_long(json.loads(line)["meta"]["answer"]) == (length == "long")]
        set_dir = os.path.join(out_dir, "sets", length)
        os.makedirs(set_dir, exist_ok=True)
        with open(os.path.join(set_dir, "eval.jsonl"), "w") as f:
            f.writelines(chosen)
        link = os.path.join(set_dir, "images")
        if not os.path.islink(link):
            os.symlink(os.path.abspath(os.path.join(data_dir, "images")), link)
        out[length] = EvalSet(set_dir, os.path.join(out_dir, length), None, processor, len(chosen))
    return out


def decode_sets(model: bj.Model, sets: dict[str, EvalSet], settings: RunSettings, name: str, batch: int,
                warmup: bool = True) -> dict[str, list[dict[str, Any]]]:
    """`decode_all` on each set (an empty set gives no samples)."""
    return {k: decode_all(model, ev, settings, name, batch, warmup) if ev.size else [] for k, ev in sets.items()}


def set_metrics(by_length: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """`metrics` of all questions, plus `short` and `long` entries with each set's own."""
    m = metrics([line for samples in by_length.values() for line in samples])
    for length, samples in by_length.items():
        if samples:
            m[length] = metrics(samples)
    return m


def exact_by_length(by_length: dict[str, list[dict[str, Any]]]) -> dict[str, np.ndarray]:
    """Each set's per-question exact match, and `all` (short then long), for paired tests."""
    out = {k: exact_per_question(v) for k, v in by_length.items()}
    out["all"] = np.concatenate([out[k] for k in LENGTHS])
    return out


def ar_settings(model_dir: str, max_new_tokens: int) -> RunSettings:
    """KV-cached greedy decoding at the task's own image sizes."""
    return RunSettings(model=model_dir, decoder="ar", max_new_tokens=max_new_tokens, min_pixels=None,
                       max_pixels=None, dtype="float32")


def diffusion_settings(model_dir: str, cfg: bj.SamplingConfig) -> RunSettings:
    return RunSettings(model=model_dir, decoder="diffusion", block_size=cfg.block_size,
                       denoising_steps=cfg.denoising_steps, strategy=cfg.strategy,
                       confidence_threshold=cfg.confidence_threshold, max_new_tokens=cfg.max_new_tokens,
                       min_pixels=None, max_pixels=None, dtype="float32", commit=cfg.commit,
                       shift_labels=cfg.shift_labels)


def decode_all(model: bj.Model, ev: EvalSet, settings: RunSettings, name: str, batch: int,
               warmup: bool = True) -> list[dict[str, Any]]:
    """Every held-out question decoded under `settings` by the runner (into OUT_DIR/<name>); the samples, in
    question order (the same for every model, so two models' samples pair question by question). `warmup=False`
    (a smoke run) decodes each batch once, its compilation inside the timed call."""
    out = os.path.join(ev.out_dir, name)
    run(settings, ev.data_dir, [TASK], out, batch_size=batch, limit=ev.limit, model=model,
        processor=ev.processor, warmup=warmup)
    return sorted(read_samples(os.path.join(out, TASK, SAMPLES_FILE)), key=lambda line: line["doc_id"])


def metrics(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The study's figures of one setting from its samples (see the module docstring)."""
    scores = synthetic.aggregate([line["record"] for line in samples])
    qtypes = sorted({line["record"]["qtype"] for line in samples})
    made = np.asarray([line["generated_tokens"] for line in samples], np.float64)
    denoise = np.asarray([line["denoising_forwards"] for line in samples], np.float64)
    seconds = float(sum(line["seconds"] for line in samples))
    return {
        "exact_match": scores["exact_match"],
        "token_accuracy": scores["token_accuracy"],
        "field_accuracy": scores["field_accuracy"],
        "per_type": {q: {"exact_match": scores[f"exact_match/{q}"], "token_accuracy": scores[f"token_accuracy/{q}"],
                         "field_accuracy": scores[f"field_accuracy/{q}"], "n": int(scores[f"n/{q}"])}
                     for q in qtypes},
        "nfe": float(np.mean([line["nfe"] for line in samples])),
        "tokens_per_forward": float(made.sum() / max(denoise.sum(), 1)),
        "tokens_per_second": float(made.sum() / seconds) if seconds else 0.0,
        "decode_seconds": seconds,
        "questions": len(samples),
    }


def exact_per_question(samples: list[dict[str, Any]]) -> np.ndarray:
    """[N] bool: each held-out question's exact match, in question order."""
    return np.asarray([line["record"]["exact"] for line in samples], bool)


def sampling_settings(block_size: int, smoke: bool) -> list[dict[str, Any]]:
    """Dynamic decoding across thresholds for every block size; static decoding at one token per forward for B4
    (the no-parallelism reference); commit reuse once, at B32. A smoke run keeps only the reference threshold 0.9
    (each setting is one more compile)."""
    dynamic = [{"strategy": "low_confidence_dynamic", "denoising_steps": block_size, "threshold": t,
                "commit": "fold"} for t in ((0.9,) if smoke else (0.5, 0.7, 0.9, 0.95))]
    static = [{"strategy": "low_confidence_static", "denoising_steps": block_size, "threshold": None,
               "commit": "fold"}] if block_size == 4 else []
    reuse = [{"strategy": "low_confidence_dynamic", "denoising_steps": block_size, "threshold": 0.9,
              "commit": "reuse"}] if block_size == 32 else []
    return static + dynamic + reuse


def ablation_settings(block_size: int, smoke: bool) -> list[dict[str, Any]]:
    """The reference setting (dynamic, 0.9) and, outside a smoke run, threshold 0.7."""
    return [{"strategy": "low_confidence_dynamic", "denoising_steps": block_size, "threshold": t, "commit": "fold"}
            for t in ((0.9,) if smoke else (0.7, 0.9))]
