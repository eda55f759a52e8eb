"""Output directories written atomically: into a temporary folder next to the destination, renamed into place
when complete, and the leftovers of killed writers cleaned up by the next one.

    with atomic_dir(dst) as tmp:   # write everything into tmp; on success it replaces dst, on failure it is removed
        ...

Temporary folders are named `.{name}.partial-{pid}@{host}-{random}` (and `.old-` for the previous version during
the final swap), so a later writer can tell a killed writer's leftovers (its pid no longer exists on this host)
from a live one's. Used by checkpoint conversion and export (`bard_jax.hf`) and by the synthetic data generator.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator

_TEMP_KINDS = ("partial", "old")


def _host() -> str:
    """This host's name as it appears in temp folder names (no '-' or '@'; short enough for a file name)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:32] or "localhost"


def _temp_pattern(base: str) -> re.Pattern[str]:
    """`.{base}.{partial|old}-{pid}@{host}-{8 hex}`: the names `_make_temp_dir` gives."""
    return re.compile(rf"\.{re.escape(base)}\.({'|'.join(_TEMP_KINDS)})-(\d+)@(.+)-[0-9a-f]{{8}}")


def _make_temp_dir(parent: str, base: str, what: str) -> str:
    """A new directory `.{base}.{what}-{pid}@{host}-{random}` in `parent`, with the mode `os.makedirs` gives (0o777
    less the umask): unlike tempfile.mkdtemp's 0700 it becomes the output as it is."""
    while True:
        path = os.path.join(parent, f".{base}.{what}-{os.getpid()}@{_host()}-{secrets.token_hex(4)}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OverflowError:  # not a pid this system can have
        return False
    return True


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:  # removed meanwhile by another run's clean-up
        return 0.0


def clean_stale_temp_dirs(out_dir: str | os.PathLike) -> list[str]:
    """Remove the temporary folders that killed writers of `out_dir` left next to it; returns what it did.

    A folder is stale when its writer's pid (in its name) no longer exists on this host; folders of live writers,
    of other hosts and of other names are left alone. A stale `.old-` folder holds the previous `out_dir` moved
    aside for the final swap: if `out_dir` is missing (the writer died between the two renames) it is moved back,
    otherwise it is removed. Stale `.partial-` folders are removed (never complete-looking: the rename is last).
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    parent, base = os.path.split(out_dir)
    if not os.path.isdir(parent):
        return []
    pattern, host = _temp_pattern(base), _host()
    stale: dict[str, list[str]] = {k: [] for k in _TEMP_KINDS}
    for name in os.listdir(parent):
        m = pattern.fullmatch(name)
        if m and m.group(3) == host and not _pid_alive(int(m.group(2))):
            stale[m.group(1)].append(os.path.join(parent, name))
    done = []
    # Newest first: if several runs died mid-swap, the most recent previous version is the one to bring back.
    for old in sorted(stale["old"], key=_mtime, reverse=True):
        previous = os.path.join(old, base)
        if not os.path.lexists(out_dir) and os.path.lexists(previous):
            os.replace(previous, out_dir)  # if this fails the error propagates and the old folder is kept
            done.append(f"restored {out_dir} from {old}")
        shutil.rmtree(old, ignore_errors=True)
        done.append(f"removed {old}")
    for tmp in stale["partial"]:
        shutil.rmtree(tmp, ignore_errors=True)
        done.append(f"removed {tmp}")
    return done


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike) -> Iterator[str]:
    """Yield a temp dir next to `out_dir`; on success it replaces `out_dir`, on any failure it is removed.

    Nothing half-written ever sits at `out_dir`: the final rename is the last step. Whatever is at `out_dir` is
    replaced (callers that must not replace unrelated data check first: `check_output_dir`). Leftovers of killed
    earlier writes to `out_dir` are cleaned up first (`clean_stale_temp_dirs`).
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    parent, base = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    clean_stale_temp_dirs(out_dir)
    tmp = _make_temp_dir(parent, base, "partial")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.lexists(out_dir):  # move the previous version aside, then swap, then delete it
        old = _make_temp_dir(parent, base, "old")
        os.replace(out_dir, os.path.join(old, base))
    os.replace(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)
