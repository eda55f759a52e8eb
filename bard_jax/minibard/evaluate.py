"""Mini-BARD evaluation: decode the held-out synthetic questions with a model and score the answers.

Prompts are rendered by the task's `Processor` and grouped by image grid (two scene sizes), left-padded to one
length and cut into fixed-size batches, so each decoding setting compiles once per group. Timing excludes that
compile (one warm-up batch per group) and includes everything else: prefill, denoising, commits, padding rows.

Metrics per setting: exact match (the answer tokens and the EOS after them, nothing else before the EOS), token
accuracy (answer tokens, EOS included, equal at their position), both overall and per question type; NFE per
question (forwards of the model including the prefill); tokens per denoising forward (answer tokens up to the EOS
over denoising forwards, summed over questions); tokens per second (the same tokens over decode wall time).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
from typing import Any

import jax
import numpy as np

import bard_jax as bj
from bard_jax.data import Processor
from bard_jax.sampler.ar import ARConfig, generate_ar


@dataclasses.dataclass
class Group:
    """Questions whose images share one grid: ids_bl [N, L] left-padded, mask_bl [N, L], pixels [N, P, D]."""

    grid: tuple[int, int, int]
    ids_bl: np.ndarray
    mask_bl: np.ndarray
    pixels_npd: np.ndarray
    answers: list[list[int]]  # answer token ids with the closing EOS
    qtypes: list[str]


@dataclasses.dataclass
class EvalSet:
    groups: list[Group]
    mask_token_id: int
    eos_token_id: int
    tokenizer: Any

    @property
    def size(self) -> int:
        return sum(len(g.answers) for g in self.groups)


def load_eval_set(data_dir: str, limit: int = 0, one_group: bool = False) -> EvalSet:
    """The task's eval.jsonl (scenes never used for training) as prompt groups (`one_group`: only the largest
    group, one compile per setting, for smoke runs)."""
    proc = Processor.from_pretrained(os.path.join(data_dir, "tokenizer"))
    tok = proc.tokenizer
    eos = proc.im_end_id
    rows: dict[tuple, list] = collections.defaultdict(list)
    with open(os.path.join(data_dir, "eval.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    for rec in records[: limit or None]:
        enc = proc.encode_chat(rec["messages"][:1], add_generation_prompt=True, image_root=data_dir)
        answer = tok.encode(rec["meta"]["answer"], add_special_tokens=False) + [eos]
        grid = tuple(int(x) for x in enc["image_grid_thw"][0])
        rows[grid].append((enc["input_ids"][0], enc["pixel_values"], answer, rec["meta"]["qtype"]))
    length = max(len(r[0]) for g in rows.values() for r in g)
    groups = []
    for grid, items in sorted(rows.items()):
        ids = np.full((len(items), length), eos, np.int32)
        mask = np.zeros((len(items), length), bool)
        for i, (x, *_rest) in enumerate(items):
            ids[i, length - len(x):], mask[i, length - len(x):] = x, True
        groups.append(Group(grid, ids, mask, np.stack([r[1] for r in items]), [r[2] for r in items],
                            [r[3] for r in items]))
    if one_group:
        groups = [max(groups, key=lambda g: len(g.answers))]
    mask_id = tok.convert_tokens_to_ids("<|mask|>")
    return EvalSet(groups, mask_id, eos, tok)


def _batches(group: Group, batch: int):
    """(start, rows, ids, mask, pixels [rows*P, D], grids [rows, 3]) with the last batch padded by repeats."""
    n = len(group.answers)
    for start in range(0, n, batch):
        idx = np.arange(start, start + batch).clip(max=n - 1)
        pixels = group.pixels_npd[idx].reshape(-1, group.pixels_npd.shape[-1])
        yield start, min(batch, n - start), group.ids_bl[idx], group.mask_bl[idx], pixels, \
            np.tile(np.asarray(group.grid, np.int64), (batch, 1))


def _score(tokens_n: np.ndarray, answer: list[int], eos: int, mask_id: int) -> tuple[bool, float, int]:
    """(exact match, token accuracy, answer tokens produced up to and including the first EOS)."""
    row = np.asarray(tokens_n)
    hits = np.nonzero(row == eos)[0]
    upto = row[: hits[0] + 1] if len(hits) else row
    n = len(answer)
    acc = float(np.mean(np.pad(row[:n], (0, max(0, n - len(row))), constant_values=-1) == np.asarray(answer)))
    return upto.tolist() == answer, acc, int(np.sum(upto != mask_id))


def run_setting(model: bj.Model, ev: EvalSet, decode, batch: int) -> dict[str, Any]:
    """Decode every question with `decode(ids, mask, pixels, grids) -> (tokens [B, N], nfe [B], denoise [B])`."""
    per_type: dict[str, list] = collections.defaultdict(list)
    nfe, denoise, produced, seconds = [], [], [], 0.0
    for group in ev.groups:
        first = next(_batches(group, batch))
        jax.block_until_ready(decode(*first[2:])[0])  # compile outside the clock
        for start, rows, ids, mask, pixels, grids in _batches(group, batch):
            t0 = time.perf_counter()
            tokens, row_nfe, row_denoise = decode(ids, mask, pixels, grids)
            tokens = np.asarray(jax.block_until_ready(tokens))
            seconds += time.perf_counter() - t0
            for r in range(rows):
                exact, acc, made = _score(tokens[r], group.answers[start + r], ev.eos_token_id, ev.mask_token_id)
                per_type[group.qtypes[start + r]].append((exact, acc))
                nfe.append(int(row_nfe[r]))
                denoise.append(int(row_denoise[r]))
                produced.append(made)
    every = [x for v in per_type.values() for x in v]
    return {
        "exact_match": float(np.mean([e for e, _ in every])),
        "token_accuracy": float(np.mean([a for _, a in every])),
        "per_type": {k: {"exact_match": float(np.mean([e for e, _ in v])),
                         "token_accuracy": float(np.mean([a for _, a in v])), "n": len(v)}
                     for k, v in sorted(per_type.items())},
        "nfe": float(np.mean(nfe)),
        "tokens_per_forward": float(np.sum(produced) / max(np.sum(denoise), 1)),
        "tokens_per_second": float(np.sum(produced) / seconds),
        "decode_seconds": seconds,
        "questions": len(every),
    }


def exact_per_question(ev: EvalSet, decode, batch: int) -> np.ndarray:
    """[N] bool: each held-out question's exact match, in the eval set's (group, row) order, which is the same for
    every model, so two models' arrays pair question by question. Untimed; `decode` as in `run_setting`."""
    exact = []
    for group in ev.groups:
        for start, rows, ids, mask, pixels, grids in _batches(group, batch):
            tokens = np.asarray(decode(ids, mask, pixels, grids)[0])
            exact += [_score(tokens[r], group.answers[start + r], ev.eos_token_id, ev.mask_token_id)[0]
                      for r in range(rows)]
    return np.asarray(exact, bool)


def ar_decoder(model: bj.Model, ev: EvalSet, max_new_tokens: int):
    cfg = ARConfig(max_new_tokens=max_new_tokens, eos_token_id=ev.eos_token_id)

    def decode(ids, mask, pixels, grids):
        out = generate_ar(model, ids, cfg, attention_mask=mask, pixel_values=pixels, image_grid_thw=grids)
        made = out.stats["generated_tokens"]  # the prefill forward makes the first token, one forward each after
        return out.tokens, made, made

    return decode


def diffusion_decoder(model: bj.Model, ev: EvalSet, cfg: bj.SamplingConfig):
    def decode(ids, mask, pixels, grids):
        out = bj.generate(model, ids, cfg, attention_mask=mask, pixel_values=pixels, image_grid_thw=grids)
        return out.tokens, out.stats["nfe"], out.stats["denoising_forwards"]

    return decode


def sampling_settings(block_size: int, smoke: bool) -> list[dict[str, Any]]:
    """Static at several step counts, dynamic across thresholds, and the commit-reuse option once. A smoke run
    keeps the reference setting (dynamic, 0.9) everywhere and the static and reuse variants at block size 4 only
    (each setting is one more compile)."""
    dynamic = [{"strategy": "low_confidence_dynamic", "denoising_steps": block_size, "threshold": t,
                "commit": "forward"} for t in ((0.9,) if smoke else (0.5, 0.7, 0.9, 0.95))]
    if smoke and block_size != 4:
        return dynamic
    static = [{"strategy": "low_confidence_static", "denoising_steps": s, "threshold": None, "commit": "forward"}
              for s in sorted({max(1, block_size // d) for d in ((1,) if smoke else (1, 4))}, reverse=True)]
    reuse = [{"strategy": "low_confidence_dynamic", "denoising_steps": block_size, "threshold": 0.9,
              "commit": "reuse"}]
    return static + dynamic + reuse
