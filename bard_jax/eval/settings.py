"""The settings of an evaluation run that decide its predictions, and the check that an output directory holds a
run of the same settings before new documents are added to it.

Every task directory OUT/<task>/ holds `run.json`: {"settings": {...}, "limit": N | null, "complete": bool}. A rerun
with the same settings resumes; with other settings it is refused before anything is written, naming both.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from bard_jax.atomic_file import atomic_file
from bard_jax.eval.errors import EvalError

DECODERS = ("diffusion", "ar")
RUN_FILE = "run.json"
SAMPLES_FILE = "samples.jsonl"
# The release's eval (eval/lmms-eval/examples/models/bard_vl.sh): block size 4, dynamic remasking, threshold 1.0,
# images between 256*256 and 2048*2048 pixels. Denoising steps default to the block size (one token per step at
# most when the threshold is never reached).
DEFAULT_BLOCK_SIZE = 4
DEFAULT_STRATEGY = "low_confidence_dynamic"
DEFAULT_THRESHOLD = 1.0
DEFAULT_MIN_PIXELS = 256 * 256
DEFAULT_MAX_PIXELS = 2048 * 2048


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What decides a run's predictions (not the batch size, which only changes the padding).

    max_new_tokens: None takes each task's own (the paper's setting); an int overrides it for every task (smoke
    runs only). For the AR decoder the block settings do not apply and are recorded as None.
    """

    model: str
    decoder: str = "diffusion"
    block_size: int = DEFAULT_BLOCK_SIZE
    denoising_steps: int | None = None
    strategy: str = DEFAULT_STRATEGY
    confidence_threshold: float = DEFAULT_THRESHOLD
    max_new_tokens: int | None = None
    min_pixels: int | None = DEFAULT_MIN_PIXELS  # None: the checkpoint's own processor settings
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    dtype: str = "bfloat16"
    commit: str = "fold"  # bj.SamplingConfig.commit: how a finished block's K/V enter the cache
    shift_labels: bool = False  # bj.SamplingConfig.shift_labels: decode a model trained with the label shift

    def for_task(self, task_max_new_tokens: int, model_digest: str | None = None) -> dict[str, Any]:
        """The settings recorded in OUT/<task>/run.json (JSON values; the model as an absolute path and the digest
        of its contents, `bard_jax.hf.digest.weights_digest`, so that a run resumes only on the same weights).

        `shift_labels` is recorded only when on, so a run.json written before the option existed (or without it)
        holds the same settings as a run without the shift and resumes, while a shifted run never mixes with it."""
        diffusion = self.decoder == "diffusion"
        shift = {"shift_labels": True} if diffusion and self.shift_labels else {}
        return {
            "model": os.path.abspath(self.model),
            "model_digest": model_digest,
            "decoder": self.decoder,
            "block_size": self.block_size if diffusion else None,
            "denoising_steps": (self.denoising_steps or self.block_size) if diffusion else None,
            "strategy": self.strategy if diffusion else None,
            "confidence_threshold": self.confidence_threshold if diffusion else None,
            "commit": self.commit if diffusion else None,
            "max_new_tokens": self.max_new_tokens or task_max_new_tokens,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "dtype": self.dtype,
            **shift,
        }


def read_run_file(task_dir: str) -> dict[str, Any] | None:
    """OUT/<task>/run.json, or None when the directory holds no run; EvalError when it cannot be read."""
    path = os.path.join(task_dir, RUN_FILE)
    if not os.path.exists(path):
        if os.path.exists(os.path.join(task_dir, SAMPLES_FILE)):
            raise EvalError(f"{task_dir} holds {SAMPLES_FILE} but no {RUN_FILE}: not a run of python -m "
                            f"bard_jax.eval (use another --out)")
        return None
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        raise EvalError(f"{path} cannot be read ({e}); use another --out or remove {task_dir}") from e
    if not isinstance(state, dict) or not isinstance(state.get("settings"), dict):
        raise EvalError(f"{path}: no settings object; use another --out or remove {task_dir}")
    return state


def _nothing_decoded(task_dir: str, state: dict[str, Any]) -> bool:
    """A run refused or stopped before its first sample: nothing of it to keep, so a run of any settings or model
    may take the directory over."""
    samples = os.path.join(task_dir, SAMPLES_FILE)
    return not state.get("complete") and (not os.path.exists(samples) or os.path.getsize(samples) == 0)


def check_same_model(out: str, settings: dict[str, Any]) -> None:
    """Refuse (EvalError naming both) when a task directory of OUT holds a run of another model, or of an earlier
    version of this one (other contents at the same path): OUT's results table describes one model."""
    if not os.path.isdir(out):
        return
    for name in sorted(os.listdir(out)):
        task_dir = os.path.join(out, name)
        if not os.path.isfile(os.path.join(task_dir, RUN_FILE)):
            continue
        state = read_run_file(task_dir)
        if _nothing_decoded(task_dir, state):
            continue
        old = state["settings"]
        if old.get("model") != settings["model"]:
            raise EvalError(f"--out {out} holds results of another model ({old.get('model')}, task {name}); this "
                            f"run evaluates {settings['model']}: use another --out (one per model)")
        if old.get("model_digest") != settings["model_digest"]:
            raise EvalError(f"--out {out} holds results of {settings['model']} when it held other weights (task "
                            f"{name}: digest {old.get('model_digest')}, now {settings['model_digest']}): use another "
                            f"--out, or remove {out} to evaluate the current weights")


def check_resumable(task_dir: str, settings: dict[str, Any]) -> None:
    """Refuse (EvalError naming both settings) when `task_dir` holds a run of other settings."""
    state = read_run_file(task_dir)
    if state is None:
        return
    if _nothing_decoded(task_dir, state):
        return
    old = state["settings"]
    keys = list(settings) + [k for k in old if k not in settings]
    diff = [k for k in keys if old.get(k) != settings.get(k)]
    if diff:
        held = ", ".join(f"{k}={old.get(k)!r}" for k in diff)
        asked = ", ".join(f"{k}={settings.get(k)!r}" for k in diff)
        raise EvalError(f"{task_dir} holds a run with other settings ({held}); this run asks for {asked}: use "
                        f"another --out, or remove {task_dir} to start it again")


def write_json_atomic(path: str, value: Any) -> None:
    """Write JSON to `path` through a temporary file and a rename: a reader never sees half a file."""
    with atomic_file(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=False)
        f.write("\n")


def write_run_file(task_dir: str, settings: dict[str, Any], limit: int | None, complete: bool) -> None:
    os.makedirs(task_dir, exist_ok=True)
    write_json_atomic(os.path.join(task_dir, RUN_FILE), {"settings": settings, "limit": limit, "complete": complete})
