"""OUT/results.json and OUT/results.md, computed from every task directory in OUT (its run.json and samples.jsonl),
so that they hold every task run into OUT so far, whichever invocation ran it, and can always be rebuilt.

Per task: the scorer's `aggregate` over all lines of samples.jsonl, the document count, the documents whose images
could not be used, forwards (NFE) total and mean over decoded documents, tokens per forward (the mean of the
documents' own figures, and all tokens over all forwards), wall time (batch times, compilation included), the
decoder settings, and whether the run went through the whole split (or its --limit).
"""

from __future__ import annotations

import os
from typing import Any

from bard_jax.atomic_file import atomic_write
from bard_jax.eval.samples import read_samples
from bard_jax.eval.settings import SAMPLES_FILE, read_run_file, write_json_atomic

# The paper's table, left to right (the release's eval script runs the tasks in this order).
PAPER_COLUMNS = (
    ("mmmu_val", "MMMU"), ("mmmu_pro_standard", "MMMU-Pro"), ("mme", "MME"), ("realworldqa", "RealWorldQA"),
    ("mmstar", "MMStar"), ("ai2d", "AI2D"), ("chartqa", "ChartQA"),
)
# The metric each column shows when the scorer reports several; otherwise its only (or first) one.
HEADLINE = {"mmmu_val": "accuracy", "mmmu_pro_standard": "accuracy", "mme": "mme_sum", "realworldqa": "exact_match",
            "mmstar": "average", "ai2d": "exact_match", "chartqa": "relaxed_overall"}
# Metrics reported as points, not fractions (MME: the perception and cognition sums, up to 2800).
POINTS = {"mme"}


def headline(task: str, metrics: dict[str, float]) -> tuple[str, float] | None:
    """(metric name, value) shown for `task`, None without metrics."""
    if not metrics:
        return None
    name = HEADLINE.get(task)
    if name not in metrics:
        name = next(iter(metrics))
    return name, float(metrics[name])


def summarize_task(task: str, lines: list[dict[str, Any]], state: dict[str, Any]) -> dict[str, Any]:
    """One task's entry of results.json from its samples lines and run.json."""
    from bard_jax.eval.scoring import SCORERS

    decoded = [line for line in lines if line.get("nfe") is not None]
    nfe = sum(line["nfe"] for line in decoded)
    made = sum(line["generated_tokens"] for line in decoded)
    metrics = SCORERS[task].aggregate([line["record"] for line in lines]) if lines else {}
    shown = headline(task, metrics)
    return {
        "metrics": metrics,
        "headline": None if shown is None else {"metric": shown[0], "value": shown[1]},
        "n_docs": len(lines),
        "undecodable_images": sum(1 for line in lines if line.get("error")),
        "nfe_total": nfe,
        "nfe_mean": nfe / len(decoded) if decoded else None,
        "generated_tokens_total": made,
        "tokens_per_forward_mean": (sum(line["tokens_per_forward"] for line in decoded) / len(decoded)
                                    if decoded else None),
        "tokens_per_nfe": made / nfe if nfe else None,
        "wall_seconds": round(sum(line.get("seconds", 0.0) for line in lines), 3),
        "complete": bool(state.get("complete")),
        "limit": state.get("limit"),
        "settings": state["settings"],
    }


def collect(out: str) -> dict[str, dict[str, Any]]:
    """Every known task's summary from the task directories present in `out`, in the paper's order."""
    from bard_jax.eval.tasks import TASKS

    order = [t for t, _ in PAPER_COLUMNS] + sorted(t for t in TASKS if t not in dict(PAPER_COLUMNS))
    summaries = {}
    for task in order:
        task_dir = os.path.join(out, task)
        if task not in TASKS or not os.path.isdir(task_dir):
            continue
        state = read_run_file(task_dir)
        if state is not None:
            summaries[task] = summarize_task(task, read_samples(os.path.join(task_dir, SAMPLES_FILE)), state)
    return summaries


def _cell(task: str, summary: dict[str, Any] | None) -> str:
    if summary is None or summary["headline"] is None:
        return "-"
    value = summary["headline"]["value"]
    text = f"{value:.1f}" if task in POINTS else f"{100 * value:.1f}"
    return text if summary["complete"] and summary["limit"] is None else text + "*"


def _setting_text(settings: dict[str, Any]) -> str:
    if settings["decoder"] == "ar":
        return "AR"
    return (f"diffusion b{settings['block_size']} s{settings['denoising_steps']} {settings['strategy']} "
            f"t{settings['confidence_threshold']:g}")


def markdown(summaries: dict[str, dict[str, Any]]) -> str:
    """The paper's table (percentages; MME as the perception + cognition sum) and a table of decode statistics."""
    any_summary = next(iter(summaries.values()), None)
    label = "-" if any_summary is None else (f"{os.path.basename(any_summary['settings']['model'].rstrip('/'))} "
                                             f"({_setting_text(any_summary['settings'])})")
    paper = [
        "| model | " + " | ".join(name for _, name in PAPER_COLUMNS) + " |",
        "|---|" + "---:|" * len(PAPER_COLUMNS),
        f"| {label} | " + " | ".join(_cell(t, summaries.get(t)) for t, _ in PAPER_COLUMNS) + " |",
        "",
    ]
    lines = [
        # The paper's table only when OUT holds one of its tasks (a synthetic-only run would show a row of "-").
        *(paper if any(t in summaries for t, _ in PAPER_COLUMNS) else []),
        "Scores in percent except MME (perception + cognition points). * not the whole split: an unfinished run, or "
        "--limit.",
        "",
        "| task | metric | score | docs | undecodable | NFE mean | tokens / forward | tokens / NFE | wall s "
        "| decoder |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    fmt = (lambda v, spec: "-" if v is None else format(v, spec))
    for task, s in summaries.items():
        metric = "-" if s["headline"] is None else s["headline"]["metric"]
        lines.append(f"| {task} | {metric} | {_cell(task, s)} | {s['n_docs']} | {s['undecodable_images']} "
                     f"| {fmt(s['nfe_mean'], '.2f')} "
                     f"| {fmt(s['tokens_per_forward_mean'], '.2f')} | {fmt(s['tokens_per_nfe'], '.2f')} "
                     f"| {s['wall_seconds']:.1f} | {_setting_text(s['settings'])} |")
    return "\n".join(lines) + "\n"


def write_results(out: str) -> dict[str, dict[str, Any]]:
    """Rebuild OUT/results.json and OUT/results.md; returns the summaries."""
    summaries = collect(out)
    write_json_atomic(os.path.join(out, "results.json"), {"tasks": summaries})
    atomic_write(os.path.join(out, "results.md"), markdown(summaries))
    return summaries
