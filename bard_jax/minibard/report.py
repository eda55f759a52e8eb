"""Mini-BARD outputs: results JSON, a markdown table, and PNG plots (accuracy vs tokens per forward; losses)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

EQUAL_ACCURACY_POINTS = 2.0  # "at equal accuracy": within this many points of the AR source (the B32 target's margin)


def _pick(results: dict[str, Any], name: str, reference: dict[str, Any]) -> dict[str, Any] | None:
    for m in results["models"]:
        if m["name"] == name and all(m.get(k) == v for k, v in reference.items()):
            return m
    return None


def _long(m: dict[str, Any], key: str) -> float:
    return m.get("long", m)[key]


def headline(results: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets: the figures at the reference setting (dynamic decoding, threshold 0.9), the best SWD B32
    setting at >= 3 tokens per forward, SWD's recovery of PBM's B4 -> B32 loss on long answers, and the fastest
    diffusion setting on long answers at the AR source's accuracy."""
    ar = results["ar"]
    out: dict[str, Any] = {"reference_setting": reference, "ar_exact_match": ar["exact_match"]}
    if "long" in ar:
        out.update(ar_exact_match_short=ar["short"]["exact_match"], ar_exact_match_long=ar["long"]["exact_match"])
    b4, b32, s32 = (_pick(results, n, reference) for n in ("pbm_b4", "pbm_b32", "swd_b32"))
    if b4 and b32 and s32:
        out.update({
            "pbm_b4_exact_match": b4["exact_match"], "pbm_b32_exact_match": b32["exact_match"],
            "swd_b32_exact_match": s32["exact_match"], "swd_b32_tokens_per_forward": s32["tokens_per_forward"],
            "swd_b32_gap_to_ar_points": 100 * (ar["exact_match"] - s32["exact_match"]),
        })
        for key in ("exact_match", "field_accuracy"):
            if key not in b4.get("long", b4):
                continue
            lost = _long(b4, key) - _long(b32, key)
            out[f"long_{key}_pbm_b4_b32_swd_b32"] = [_long(b4, key), _long(b32, key), _long(s32, key)]
            recovered = (_long(s32, key) - _long(b32, key)) / lost if lost > 0 else None
            out[f"swd_recovered_fraction_long_{key}"] = recovered
    # The B32 + SWD target at any decoding setting: the most accurate one decoding >= 3 tokens per forward.
    fast = [m for m in results["models"] if m["name"] == "swd_b32" and m["tokens_per_forward"] >= 3.0]
    if fast:
        best = max(fast, key=lambda m: m["exact_match"])
        keys = ("setting", "strategy", "denoising_steps", "threshold", "commit", "exact_match", "tokens_per_forward")
        out["swd_b32_best_at_3_tokens_per_forward"] = {
            **{k: best.get(k) for k in keys}, "gap_to_ar_points": 100 * (ar["exact_match"] - best["exact_match"])}
    # Wall clock on long answers at equal accuracy: the fastest diffusion setting whose long-answer exact match is
    # within EQUAL_ACCURACY_POINTS of the AR source's (and, separately, at least the AR source's).
    for label, margin in (("within_2_points", EQUAL_ACCURACY_POINTS / 100), ("at_least_ar", 0.0)):
        good = [m for m in results["models"] if _long(m, "exact_match") >= _long(ar, "exact_match") - margin]
        if good:
            best = max(good, key=lambda m: _long(m, "tokens_per_second"))
            out[f"fastest_long_{label}"] = {
                **{k: best.get(k) for k in ("name", "strategy", "denoising_steps", "threshold", "commit")},
                "long_exact_match": _long(best, "exact_match"),
                "long_tokens_per_second": _long(best, "tokens_per_second"),
                "speedup_vs_ar": _long(best, "tokens_per_second") / _long(ar, "tokens_per_second")}
    return out


def sign_test_p(a_only: int, b_only: int) -> float:
    """Exact two-sided p-value of `a_only` vs `b_only` discordant questions under a fair coin (McNemar's exact
    test): only the questions one model gets right and the other wrong decide their difference."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_table(exact: dict, pairs: list) -> list[dict[str, Any]]:
    """Paired comparisons of per-question exact match: for each (A, B) and each of all / short / long questions,
    B - A in points, the discordant counts and the exact sign test's p. Keys are (name, setting index)."""
    rows = []
    for a, b in pairs:
        for subset in ("all", "short", "long"):
            ea, eb = exact[a][subset], exact[b][subset]
            a_only, b_only = int(np.sum(ea & ~eb)), int(np.sum(eb & ~ea))
            rows.append({"a": a[0], "a_setting": a[1], "b": b[0], "b_setting": b[1], "subset": subset,
                         "questions": int(len(ea)), "a_exact": float(ea.mean()) if len(ea) else 0.0,
                         "b_exact": float(eb.mean()) if len(eb) else 0.0,
                         "points": 100 * (b_only - a_only) / max(len(ea), 1), "a_only": a_only, "b_only": b_only,
                         "p": sign_test_p(a_only, b_only)})
    return rows


def _paired_markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| A | B | questions | A exact % | B exact % | B - A points | only A right | only B right | p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['a']} | {r['b']} (setting {r['b_setting']}) | {r['subset']} ({r['questions']}) | "
                     f"{100 * r['a_exact']:.1f} | {100 * r['b_exact']:.1f} | {r['points']:+.1f} | {r['a_only']} | "
                     f"{r['b_only']} | {r['p']:.3g} |")
    return lines


def _row(m: dict[str, Any], ar: dict[str, Any]) -> str:
    thr = "-" if m.get("threshold") is None else f"{m['threshold']:.2f}"
    short, long = m.get("short", m), m.get("long", m)
    speed = _long(m, "tokens_per_second") / max(_long(ar, "tokens_per_second"), 1e-9)
    return (f"| {m['name']} | {m['block_size']} | {m['strategy'].replace('low_confidence_', '')} | "
            f"{m.get('denoising_steps', '-')} | {thr} | {m.get('commit', '-')} | {100 * m['exact_match']:.1f} | "
            f"{100 * short['exact_match']:.1f} | {100 * long['exact_match']:.1f} | "
            f"{100 * short['field_accuracy']:.1f} | {100 * long['field_accuracy']:.1f} | {m['nfe']:.1f} | "
            f"{short['tokens_per_forward']:.2f} | "
            f"{long['tokens_per_forward']:.2f} | {long['tokens_per_second']:.0f} | {speed:.2f}x |")


HEADER = ["| model | block | strategy | steps | threshold | commit | exact % | exact % short | exact % long "
          "| field % short | field % long | NFE | tokens/fwd short | tokens/fwd long | tokens/s long "
          "| speed vs AR (long) |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]


def markdown(results: dict[str, Any]) -> str:
    ar = dict(results["ar"], denoising_steps="-", commit="-")
    lines = list(HEADER) + [_row(ar, ar)] + [_row(m, ar) for m in results["models"]]
    types = sorted(ar["per_type"])
    lines += ["", "Exact match % per question type (diffusion models at the reference setting):", "",
              "| model | " + " | ".join(types) + " |", "|---|" + "---|" * len(types),
              "| ar | " + " | ".join(f"{100 * ar['per_type'][t]['exact_match']:.1f}" for t in types) + " |"]
    ref = results["headline"]["reference_setting"]
    for m in results["models"]:
        if all(m.get(k) == v for k, v in ref.items()):
            lines.append(f"| {m['name']} | " + " | ".join(
                f"{100 * m['per_type'].get(t, {}).get('exact_match', float('nan')):.1f}" for t in types) + " |")
    lines += ["", "Paired comparisons (exact sign test):", ""] + _paired_markdown(results.get("paired", []))
    h = results["headline"]
    lines += ["", "Targets:", ""] + [f"- {k}: {json.dumps(v)}" for k, v in h.items()]
    return "\n".join(lines) + "\n"


def ablations_markdown(results: dict[str, Any]) -> str:
    ar = dict(results["ar"], denoising_steps="-", commit="-")
    lines = list(HEADER) + [_row(ar, ar)] + [_row(m, ar) for m in results["models"]]
    lines += ["", "Paired comparisons at the reference setting (each ablation B against its main stage A):", ""]
    return "\n".join(lines + _paired_markdown(results["paired"])) + "\n"


def plots(results: dict[str, Any], losses: dict[str, list[tuple[int, float]]], out_dir: str) -> list[str]:
    """accuracy_vs_tpf.png and losses.png; nothing (and a message) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[minibard] matplotlib not installed: no plots (pip install matplotlib)")
        return []
    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = sorted({m["name"] for m in results["models"]}, key=lambda n: (n[:3], int(n.split("_b")[1])))
    for name in names:
        pts = sorted((_long(m, "tokens_per_forward"), 100 * _long(m, "exact_match")) for m in results["models"]
                     if m["name"] == name and m["commit"] != "reuse")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if name.startswith("swd") else "s--", label=name,
                alpha=0.85)
    ax.axhline(100 * _long(results["ar"], "exact_match"), color="k", lw=1, label="AR (1 token/forward)")
    written.append(_finish(plt, fig, ax, "tokens per denoising forward (long answers)",
                           "exact match on long answers (%)",
                           "Mini-BARD: accuracy vs parallelism on long answers",
                           os.path.join(out_dir, "minibard_accuracy_vs_tpf.png")))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    offset = 0
    for name, pts in losses.items():
        if not pts:
            continue
        ax.plot([offset + s for s, _ in pts], [v for _, v in pts], label=name)
        offset += pts[-1][0]
    ax.set_yscale("log")
    written.append(_finish(plt, fig, ax, "optimizer step (stages in sequence)", "training loss",
                           "Mini-BARD training losses", os.path.join(out_dir, "minibard_losses.png")))
    return written


def _finish(plt, fig, ax, xlabel: str, ylabel: str, title: str, path: str) -> str:
    """Label, grid, legend, save as PNG and close; returns the path."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_losses(workdir: str, names: list[str]) -> dict[str, list[tuple[int, float]]]:
    out = {}
    for name in names:
        path = os.path.join(workdir, name, "metrics.jsonl")
        if os.path.isfile(path):
            rows = [json.loads(line) for line in open(path) if line.strip()]
            out[name] = [(int(r["step"]), float(r["loss"])) for r in rows if "loss" in r]
    return out
