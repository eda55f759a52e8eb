"""What a training run may do with its workdir: hold it alone, and never replace what it did not write.

    check_workdir_writable(workdir)         # before any work: a directory we can write, or can create
    lock = WorkdirLock.take(workdir)        # refused while another live run holds it; released on exit or death
    check_fresh_start(workdir)              # no checkpoint to resume: refuse if an earlier run's results are there
    check_export_dir(workdir/export, ...)   # (bard_jax.hf) the export replaces only an earlier export

The lock is an advisory `fcntl.flock` on WORKDIR/.lock, which the kernel releases when the holder exits in any way
(`kill -9` included), so a stale lock needs no clean-up: the next run takes it over. The file also names the
holder (pid, host, start time) for the error message.
"""

from __future__ import annotations

import datetime
import json
import os
import socket

from bard_jax.errors import TrainingError

LOCK_FILE = ".lock"


def check_workdir_writable(workdir: str) -> None:
    """Fail now, not after data generation and weight loading, if the workdir cannot be written: it must be a
    writable directory, or not exist yet under a writable one. Nothing is created here (a run refused later, for a
    bad setting, leaves nothing behind)."""
    existing = workdir
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    problem = None
    if not os.path.isdir(existing):
        problem = f"{existing} is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    if problem:
        raise TrainingError(f"workdir {workdir} cannot be written: {problem}")


class WorkdirLock:
    """The exclusive claim of one run on its workdir, held from `take` to `release` (or the process's end).

    A workdir that `take` created and that still holds nothing but the lock file at `release` (the run was refused
    before writing anything) is removed again, so a refused command leaves nothing behind."""

    def __init__(self, path: str, handle, created: bool) -> None:
        self.path, self._handle, self._created = path, handle, created

    @classmethod
    def take(cls, workdir: str) -> WorkdirLock:
        """Create the workdir if needed and lock it; TrainingError naming the holder when another run has it."""
        import fcntl

        created = not os.path.exists(workdir)
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, LOCK_FILE)
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = _describe_holder(handle.read())
            handle.close()
            raise TrainingError(f"workdir {workdir} is in use by another training run ({holder}); two runs on one "
                                "workdir would overwrite each other's checkpoints and metrics: wait for it to "
                                "finish, stop it, or pass another --workdir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": datetime.datetime.now().isoformat(timespec="seconds")}) + "\n")
        handle.flush()
        return cls(path, handle, created)

    def release(self) -> None:
        if self._handle is None:
            return
        workdir = os.path.dirname(self.path)
        if self._created and os.listdir(workdir) == [LOCK_FILE]:
            os.remove(self.path)  # removed while still held, so no other run holds it
            os.rmdir(workdir)
        self._handle.close()  # closing drops the flock; a kept file's content is only informative
        self._handle = None


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "its lock file names no holder"


def check_fresh_start(workdir: str) -> None:
    """A run that found no checkpoint starts at step 0: refuse when the workdir holds an earlier run's results
    (an export, or metrics past step 0), which starting over would cut or replace."""
    found = []
    export = os.path.join(workdir, "export")
    if os.path.isdir(export) and os.listdir(export):
        found.append(f"an export ({export})")
    last = _last_logged_step(os.path.join(workdir, "metrics.jsonl"))
    if last:
        found.append(f"metrics up to step {last} (metrics.jsonl)")
    if found:
        raise TrainingError(f"workdir {workdir} holds an earlier run's results ({' and '.join(found)}) but no "
                            f"checkpoint to resume from ({os.path.join(workdir, 'checkpoints')} is empty or missing): "
                            "starting over would replace them; pass another --workdir, or move them away yourself")


def _last_logged_step(path: str) -> int:
    """The largest step in metrics.jsonl (0 when missing, empty or unreadable rows only)."""
    if not os.path.isfile(path):
        return 0
    last = 0
    with open(path, errors="replace") as f:
        for line in f:
            try:
                last = max(last, int(json.loads(line).get("step", 0)))
            except (ValueError, TypeError, AttributeError):
                continue
    return last
