"""Mini-BARD outputs: results JSON, a markdown table, and PNG plots (accuracy vs tokens per forward; losses)."""

from __future__ import annotations

import json
import os
from typing import Any


def headline(results: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, computed at one reference setting (dynamic decoding, threshold `reference`)."""

    def pick(name: str) -> dict[str, Any] | None:
        for m in results["models"]:
            if m["name"] == name and all(m.get(k) == v for k, v in reference.items()):
                return m
        return None

    ar = results["ar"]
    out: dict[str, Any] = {"reference_setting": reference, "ar_exact_match": ar["exact_match"]}
    b4, b32, s32 = pick("pbm_b4"), pick("pbm_b32"), pick("swd_b32")
    if b4 and b32 and s32:
        lost = b4["exact_match"] - b32["exact_match"]
        out.update({
            "pbm_b4_exact_match": b4["exact_match"], "pbm_b32_exact_match": b32["exact_match"],
            "swd_b32_exact_match": s32["exact_match"], "swd_b32_tokens_per_forward": s32["tokens_per_forward"],
            "swd_b32_gap_to_ar_points": 100 * (ar["exact_match"] - s32["exact_match"]),
            "swd_recovered_fraction": (s32["exact_match"] - b32["exact_match"]) / lost if lost > 0 else None,
        })
    # The B32 + SWD target at any decoding setting: the most accurate one decoding >= 3 tokens per forward.
    fast = [m for m in results["models"] if m["name"] == "swd_b32" and m["tokens_per_forward"] >= 3.0]
    if fast:
        best = max(fast, key=lambda m: m["exact_match"])
        keys = ("strategy", "denoising_steps", "threshold", "commit", "exact_match", "tokens_per_forward")
        out["swd_b32_best_at_3_tokens_per_forward"] = {
            **{k: best[k] for k in keys}, "gap_to_ar_points": 100 * (ar["exact_match"] - best["exact_match"])}
    # Wall clock at equal accuracy: the fastest diffusion setting whose exact match is at least the AR model's.
    good = [m for m in results["models"] if m["exact_match"] >= ar["exact_match"]]
    if good:
        best = max(good, key=lambda m: m["tokens_per_second"])
        out["fastest_at_ar_accuracy"] = {k: best[k] for k in ("name", "strategy", "denoising_steps", "threshold",
                                                               "commit", "exact_match", "tokens_per_second")}
        out["speedup_vs_ar_at_equal_accuracy"] = best["tokens_per_second"] / ar["tokens_per_second"]
    return out


def markdown(results: dict[str, Any]) -> str:
    ar = results["ar"]
    lines = ["| model | block | strategy | steps | threshold | commit | exact match | token acc. | NFE "
             "| tokens/forward | tokens/s | speed vs AR |", "|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| ar | 1 | autoregressive | - | - | - | {100 * ar['exact_match']:.1f} | "
             f"{100 * ar['token_accuracy']:.1f} | {ar['nfe']:.1f} | 1.00 | {ar['tokens_per_second']:.0f} | 1.00x |"]
    for m in results["models"]:
        thr = "-" if m["threshold"] is None else f"{m['threshold']:.2f}"
        lines.append(
            f"| {m['name']} | {m['block_size']} | {m['strategy'].replace('low_confidence_', '')} | "
            f"{m['denoising_steps']} | {thr} | {m['commit']} | {100 * m['exact_match']:.1f} | "
            f"{100 * m['token_accuracy']:.1f} | {m['nfe']:.1f} | {m['tokens_per_forward']:.2f} | "
            f"{m['tokens_per_second']:.0f} | {m['tokens_per_second'] / ar['tokens_per_second']:.2f}x |")
    types = sorted(ar["per_type"])
    lines += ["", "Exact match per question type (reference setting for diffusion models):", "",
              "| model | " + " | ".join(types) + " |", "|---|" + "---|" * len(types),
              "| ar | " + " | ".join(f"{100 * ar['per_type'][t]['exact_match']:.1f}" for t in types) + " |"]
    ref = results["headline"]["reference_setting"]
    for m in results["models"]:
        if all(m.get(k) == v for k, v in ref.items()):
            lines.append(f"| {m['name']} | " + " | ".join(
                f"{100 * m['per_type'].get(t, {}).get('exact_match', float('nan')):.1f}" for t in types) + " |")
    h = results["headline"]
    lines += ["", "Targets:", ""] + [f"- {k}: {json.dumps(v)}" for k, v in h.items()]
    return "\n".join(lines) + "\n"


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
        pts = sorted((m["tokens_per_forward"], 100 * m["exact_match"]) for m in results["models"]
                     if m["name"] == name and m["commit"] == "forward")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if name.startswith("swd") else "s--", label=name,
                alpha=0.85)
    ax.axhline(100 * results["ar"]["exact_match"], color="k", lw=1, label="AR (1 token/forward)")
    written.append(_finish(plt, fig, ax, "tokens per denoising forward", "exact match (%)",
                           "Mini-BARD: accuracy vs parallelism (static and dynamic decoding)",
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
