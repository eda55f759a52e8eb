"""Metrics sinks: the console (a progress bar), `WORKDIR/metrics.jsonl` and TensorBoard event files; and
`PendingSteps`, which keeps the steps' metrics on the device until a check fetches them.

Only process 0 writes. Each logged step is one JSON object with at least `step`, `loss`, `step_seconds` and the
memory peaks so far (`memory_peaks`). A run that resumes
from step N first drops the rows past N (logged after the checkpoint it resumes from, and about to be logged
again), so the file holds each step once and in order.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np


class MetricsWriter:
    def __init__(self, workdir: str, total_steps: int, start_step: int = 0, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.total = total_steps
        self._tb = None
        self._bar = None
        self._jsonl = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, "metrics.jsonl")
        keep_rows_up_to(path, start_step)
        self._jsonl = open(path, "a")
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:  # pragma: no cover - tensorboardX is a dependency; keep training if it is missing
            self._tb = None
        from tqdm import tqdm

        self._bar = tqdm(total=total_steps, initial=start_step, file=sys.stderr, dynamic_ncols=True, leave=True)
        self._last = time.time()
        self._first_step = True

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for k, v in metrics.items():
            v = np.asarray(v)
            row[k] = v.item() if v.size == 1 else v.tolist()
        row["time"] = time.time()
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}")

    def advance(self, n: int = 1) -> None:
        if self._bar is None:
            return
        if not self._first_step:
            self._bar.update(n)
            return
        # The first step compiled the train step: its time says nothing about the steps to come, so it is counted
        # without an estimate and the bar's clock starts after it (else it shows a wait many times too long), and
        # the compile is named.
        self._first_step = False
        bar = self._bar
        bar.write(f"[bard_jax.train] first step: {time.time() - self._last:.0f} s, most of it compiling the step "
                  "(other batch shapes compile when they first come); the time estimate starts now")
        bar.n += n
        bar.initial = bar.last_print_n = bar.n
        bar.start_t = bar.last_print_t = bar._time()
        bar.refresh()

    def message(self, text: str) -> None:
        if self.enabled:
            (self._bar.write if self._bar is not None else print)(text)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


def keep_rows_up_to(path: str, step: int) -> None:
    """Rewrite `path` without the rows whose step is past `step` (and without a torn last line, the trace of a
    killed run), atomically: a temporary file renamed over the old one. A file with nothing to drop is left as is."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept == lines:
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


# The step outputs that steer the loop rather than describe training: not written as metrics.
CONTROL_KEYS = ("finite", "applied", "stop")


class NonFiniteStep(Exception):
    """Raised by `PendingSteps.check` for the first step whose update was not applied (control flow: the loop turns
    it into the error the user sees, with the examples of every process and the checkpoint that is kept)."""

    def __init__(self, step: int, metrics: dict[str, Any], examples: np.ndarray, checked_at: int):
        super().__init__(f"non-finite step {step}")
        self.step, self.metrics, self.examples, self.checked_at = step, metrics, examples, checked_at


class PendingSteps:
    """The steps dispatched since the last check, their metrics still device arrays (nothing waits for them).

    `check()` fetches them all in one transfer, a host synchronisation (it waits for the last step to finish), so
    the loop calls it only at log intervals, before a save and at the end. It writes the rows of the log steps in
    order and raises `NonFiniteStep` at the first step whose update was not applied, after writing the rows before
    it. `step_seconds` is the mean wall time per step since the previous check (a step's own time is not observable
    without a synchronisation per step).
    """

    def __init__(self, writer: MetricsWriter, log_every: int, total_steps: int):
        self.writer, self.log_every, self.total = writer, log_every, total_steps
        self._steps: list[tuple[int, dict[str, Any], np.ndarray]] = []
        self._since = time.time()

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, step: int, metrics: dict[str, Any], examples: Any) -> None:
        """Keep step `step`'s metrics (device arrays) and the ids of its examples (this process's, on the host)."""
        self._steps.append((step, metrics, np.asarray(examples if examples is not None else [])))

    def check(self) -> None:
        """Fetch the pending steps' metrics, write the log steps' rows, raise NonFiniteStep at a step not applied."""
        if not self._steps:
            return
        fetched = jax.device_get([m for _, m, _ in self._steps])
        seconds = (time.time() - self._since) / len(self._steps)
        steps, self._steps, self._since = self._steps, [], time.time()
        for (step, _, examples), metrics in zip(steps, fetched):
            if not bool(metrics["applied"]):
                raise NonFiniteStep(step, metrics, examples, checked_at=steps[-1][0])
            if step % self.log_every == 0 or step == self.total:
                row = {k: v for k, v in metrics.items() if k not in CONTROL_KEYS}
                self.writer.write(step, {**row, "step_seconds": seconds, **memory_peaks()})


def memory_peaks() -> dict[str, float]:
    """The peaks of memory so far, in GiB: `host_peak_gib`, this process's resident set (on a CPU backend, the
    training's own memory); `device_peak_gib`, the largest of this process's devices' allocator peaks, where the
    backend reports one (GPU, TPU). Set against the dry run's plan, they check it on a real run."""
    import resource

    out = {"host_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30}  # Linux: KiB
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
    peaks = [p for p in peaks if p is not None]
    if peaks:
        out["device_peak_gib"] = max(peaks) / 2**30
    return out
