"""Directories that checkpoint I/O reads and writes: what counts as a weights directory, and which destinations a
conversion may replace (the write itself is `bard_jax.atomic_dir`).

    check_weights_dir(path)                              # CheckpointError unless HF or bard_jax weights live there
    check_output_dir(src, dst, overwrite=..., kind="bard_jax" | "hf")   # the command lines' destination guard
    check_export_dir(dst, kind, writer)                  # the training export's guard

`atomic_dir` replaces whatever is at `dst`; the training export calls `check_export_dir` first (its own earlier
export may be replaced, nothing else), the two convert commands call `check_output_dir`, which allows only an empty
or missing destination, or, with overwrite, an earlier output of the same conversion, recognised by its contents (no
marker file is added to an HF directory).
"""

from __future__ import annotations

import fnmatch
import os
import re

from bard_jax.atomic_dir import clean_stale_temp_dirs
from bard_jax.errors import InputError
from bard_jax.hf.common import CONVERTED_MARKER, SIDE_FILES, CheckpointError

HF_CONFIG = "config.json"
# Top-level entries of each conversion's output besides SIDE_FILES: (name or regex, is a directory).
_LAYOUTS = {
    "bard_jax": (CONVERTED_MARKER, "convert/hf_to_jax.py (a bard_jax directory)",
                 ((re.escape(CONVERTED_MARKER), False), ("params", True))),
    "hf": (HF_CONFIG, "convert/jax_to_hf.py (an HF export)",
           ((re.escape(HF_CONFIG), False), (r"model\.safetensors", False), (r"model\.safetensors\.index\.json", False),
            (r"model-\d{5}-of-\d{5}\.safetensors", False))),
}
_LISTED = 6  # names shown when describing an unrelated directory


# ------------------------------------------------------------------------------------------------ weights dirs
def check_weights_dir(path: str | os.PathLike) -> None:
    """Raise CheckpointError (one line) unless `path` is a directory with config.json or bard_jax_config.json.

    A training workdir (checkpoints/, metrics.jsonl, export/) is the usual mix-up: the message names the
    directory to pass instead (its export/), or says that the run has not exported yet.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise CheckpointError(f"checkpoint directory not found: {p}")
    if not os.path.isdir(p):
        raise CheckpointError(f"{p}: not a directory (pass the checkpoint directory, not a file in it)")
    if os.path.isfile(os.path.join(p, HF_CONFIG)) or os.path.isfile(os.path.join(p, CONVERTED_MARKER)):
        return
    export = os.path.join(p, "export")
    if os.path.isfile(os.path.join(export, CONVERTED_MARKER)):
        raise CheckpointError(f"{p} is a training workdir, not a weights directory: pass {export} "
                              "(written when training finishes)")
    if os.path.isdir(os.path.join(p, "checkpoints")) or os.path.isfile(os.path.join(p, "metrics.jsonl")):
        raise CheckpointError(f"{p} is a training workdir whose run has not exported yet (no {export}): its "
                              f"training checkpoints are in {os.path.join(p, 'checkpoints')}; re-running the "
                              f"training command resumes the run and writes {export} when it finishes")
    raise CheckpointError(f"{p}: not a weights directory (neither {HF_CONFIG} of an HF checkpoint nor "
                          f"{CONVERTED_MARKER} of a bard_jax directory)")


# ------------------------------------------------------------------------------------------------ destinations
def _is_within(inner: str, outer: str) -> bool:
    return os.path.commonpath([inner, outer]) == outer


def _describe(path: str, names: list[str]) -> str:
    shown = [n + "/" if os.path.isdir(os.path.join(path, n)) else n for n in sorted(names)[:_LISTED]]
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return ", ".join(shown) + more


def _foreign_entries(path: str, names: list[str], kind: str) -> list[str]:
    """Entries of `path` that the conversion `kind` does not write."""
    layout = _LAYOUTS[kind][2]
    foreign = []
    for name in names:
        full = os.path.join(path, name)
        ours = any(re.fullmatch(pattern, name) and os.path.isdir(full) == is_dir and not os.path.islink(full)
                   for pattern, is_dir in layout)
        side = os.path.isfile(full) and not os.path.islink(full) and not name.endswith(".safetensors") and any(
            fnmatch.fnmatchcase(name, pattern) for pattern in SIDE_FILES)
        if not (ours or side):
            foreign.append(name)
    return foreign


def _earlier_output(dst: str, kind: str, what: str, advice: str) -> bool:
    """False for a missing or empty `dst`, True for an earlier output of `kind`; CheckpointError (naming the entries
    and ending with `advice`) for a file or any other directory. Leftovers of killed writes are cleaned first."""
    marker = _LAYOUTS[kind][0]
    clean_stale_temp_dirs(dst)
    if os.path.lexists(dst) and not os.path.isdir(dst):
        raise CheckpointError(f"{dst} exists and is not a directory; choose a directory path for the output")
    names = os.listdir(dst) if os.path.isdir(dst) else []
    if not names:
        return False
    foreign = _foreign_entries(dst, names, kind)
    if foreign or marker not in names:
        reason = f"files it does not write: {_describe(dst, foreign)}" if foreign else f"no {marker}"
        raise CheckpointError(f"{dst} is not empty and not an earlier output of {what} (it holds "
                              f"{_describe(dst, names)}; {reason}); {advice}")
    return True


def check_export_dir(dst: str | os.PathLike, kind: str, writer: str) -> None:
    """Raise CheckpointError unless `writer` (a training run) may write its `kind` export to `dst`: a missing or
    empty directory, or an earlier export of the same kind, which it replaces (a resumed or re-run training exports
    again). Anything else is the user's and is left alone."""
    if kind not in _LAYOUTS:
        raise InputError(f"unknown output kind {kind!r}; expected one of {sorted(_LAYOUTS)}")
    _earlier_output(os.fspath(dst), kind, f"an export ({_LAYOUTS[kind][1]} writes the same)",
                    f"{writer} does not replace it: move those files, or set another workdir")


def check_output_dir(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool, kind: str) -> None:
    """Raise CheckpointError unless writing the `kind` conversion of `src` to `dst` loses nothing.

    kind: "bard_jax" (HF -> our format, convert/hf_to_jax.py) or "hf" (ours -> HF, convert/jax_to_hf.py).
    Allowed: a missing or empty `dst`, or, with `overwrite`, an earlier output of the same conversion (it holds
    the marker file of `kind` and nothing that conversion does not write). Refused always: `dst` a file, `dst`
    equal to, inside, or containing `src` (real paths: symlinks and '..' resolved), any other non-empty directory.
    Leftovers of a killed earlier write to `dst` are cleaned up (see `clean_stale_temp_dirs`) before looking.
    """
    if kind not in _LAYOUTS:
        raise InputError(f"unknown output kind {kind!r}; expected one of {sorted(_LAYOUTS)}")
    what = _LAYOUTS[kind][1]
    src, dst = os.fspath(src), os.fspath(dst)
    real_src, real_dst = os.path.realpath(src), os.path.realpath(dst)
    if real_dst == real_src:
        raise CheckpointError(f"{dst} is the source directory {src}: writing there would replace the source; "
                              "choose another output directory")
    if _is_within(real_src, real_dst):
        raise CheckpointError(f"{dst} contains the source directory {src}: writing there would delete the source; "
                              "choose an output directory outside it")
    if _is_within(real_dst, real_src):
        raise CheckpointError(f"{dst} lies inside the source directory {src}; choose an output directory outside it")
    if _earlier_output(dst, kind, what, "it is left untouched, even with --overwrite: choose a new or empty "
                       "directory, or remove it yourself") and not overwrite:
        raise CheckpointError(f"{dst} holds an earlier output of {what}; pass --overwrite (overwrite=True from "
                              "Python) to replace it, or choose another directory")
