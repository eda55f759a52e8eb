"""Training checkpoints with orbax: the train state (params, optimizer state, step, rng) plus JSON metadata
(the data iterator state and the recipe's shape fingerprint), the last N kept.

Restoring goes straight into the target shardings (never whole on one device). A checkpoint written by a
different recipe shape is refused with a message that names the differences. A checkpoint that cannot be read
(truncated or corrupted files) is named with the file at fault and set aside as `STEP.unreadable-N` (nothing is
deleted); the run resumes from the newest readable one, or stops if there is none.

Saves are asynchronous: `save` returns once the arrays are copied to host memory (so the loop may donate and
overwrite them at once) and orbax writes the files in a background thread while training goes on. A save finishes
before the next one starts and before `wait_until_finished` / `close` return; the loop calls one of them on every way
out. Each save is atomic: orbax writes `STEP.orbax-checkpoint-tmp` and renames it to `STEP` only once everything is
written, so a process killed mid-save leaves a temporary directory that no restore considers (and the next
Checkpointer removes), never a `STEP` that looks complete.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from bard_jax.errors import BardError, InputError


class CheckpointMismatchError(BardError, ValueError):
    """A checkpoint that does not belong to this recipe (different model shape, objective or optimizer)."""


class UnreadableCheckpointError(BardError, RuntimeError):
    """A checkpoint whose files cannot be read; the message names the step and the file."""


TMP_MARK = ".orbax-checkpoint-tmp"  # in the name of a save orbax has not committed yet


def remove_killed_saves(directory: str) -> None:
    """Delete the temporary directories of saves that were never committed (the process died mid-save), before
    anything looks at `directory`: restore ignores them, and nothing else would remove them."""
    for name in os.listdir(directory):
        if TMP_MARK in name:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3):
        if keep < 1:
            raise InputError(f"keep_checkpoints must be >= 1 (a resume needs the newest checkpoint), got {keep}")
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        remove_killed_saves(self.directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=True,
                # Orbax's own clean-up of killed saves may still be running when the constructor returns;
                # `remove_killed_saves` above has already done it (the workdir lock keeps other runs out).
                cleanup_tmp_directories=True,
            ),
        )

    def latest_step(self) -> int | None:
        self.wait_until_finished()
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any], force: bool = True) -> None:
        """Start writing `state` (a pytree of arrays) and `meta` (JSON-serialisable) as checkpoint `step`.

        Returns once `state` is copied to host memory; the files are written in the background. The previous save
        is finished first (and its error, if it failed, raised here).
        """
        self.wait_until_finished()
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=force,
        )

    def wait_until_finished(self) -> None:
        """Block until the save in progress (if any) is written and committed."""
        self.manager.wait_until_finished()

    def read_meta(self, step: int) -> dict[str, Any]:
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore(self, step: int, abstract_state: Any, fingerprint: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Restore checkpoint `step` into the shapes/shardings of `abstract_state` (ShapeDtypeStructs).

        `fingerprint` is compared with the one saved in the metadata before any array is read.
        """
        meta = self.read_meta(step)
        saved = meta.get("fingerprint", {})
        diffs = [
            f"{k}: checkpoint has {saved.get(k)!r}, recipe has {v!r}"
            for k, v in fingerprint.items()
            if saved.get(k) != v
        ]
        if diffs:
            raise CheckpointMismatchError(
                f"checkpoint {self.directory}/{step} was written by a different recipe shape: " + "; ".join(diffs)
            )
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return restored["state"], meta

    def restore_latest(self, abstract_state: Any, fingerprint: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
        """(state, meta) of the newest readable checkpoint, or None when there is none at all.

        An unreadable checkpoint is reported on stderr (step and file) and the next older one is tried. Once one
        restores, the unreadable newer ones are renamed to `STEP.unreadable-N` (kept, and out of the way of the
        steps the resumed run will save). A checkpoint of another recipe shape is not "unreadable": it raises
        CheckpointMismatchError at once. When checkpoints exist but none can be read, UnreadableCheckpointError
        names each one and nothing is renamed, so a re-run says the same instead of starting from step 0.
        """
        self.wait_until_finished()  # a save of this process still being written is the newest checkpoint
        broken: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.restore(step, abstract_state, fingerprint)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # orbax / tensorstore / json raise many types for one cause: a bad file
                reason = describe_unreadable(os.path.join(self.directory, str(step)), e)
                broken.append((step, reason))
                print(f"[bard_jax.train] warning: checkpoint step {step} cannot be read: {reason}", file=sys.stderr)
                continue
            for bad, _ in broken:
                kept = self.set_aside(bad)
                print(f"[bard_jax.train] warning: resuming from step {step}; the unreadable step {bad} is kept as "
                      f"{kept}", file=sys.stderr)
            return restored
        if broken:
            raise UnreadableCheckpointError(
                f"no readable checkpoint in {self.directory}: "
                + "; ".join(f"step {step}: {reason}" for step, reason in broken)
                + ". Move the checkpoints directory aside to start again from step 0")
        return None

    def set_aside(self, step: int) -> str:
        """Rename checkpoint `step` out of orbax's sight (orbax ignores non-numeric names); returns the new path."""
        source = os.path.join(self.directory, str(step))
        n = 0
        while os.path.exists(target := f"{source}.unreadable-{n}"):
            n += 1
        if jax.process_index() == 0:  # one process renames; the others see it on the shared filesystem
            os.replace(source, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"bard_jax: checkpoint {step} set aside")
        self.manager.reload()
        return target

    def close(self) -> None:
        """Finish the save in progress and release orbax's threads."""
        self.manager.close()


def describe_unreadable(step_dir: str, error: BaseException) -> str:
    """Which file of a checkpoint is broken: the first metadata file that is not valid JSON, a missing item, or
    (for array data, whose errors come from TensorStore) the state directory and the first line of the error."""
    for item in ("meta", "state"):
        if not os.path.isdir(os.path.join(step_dir, item)):
            return f"{os.path.join(step_dir, item)} is missing"
    candidates = [os.path.join(step_dir, "meta", "metadata"), os.path.join(step_dir, "state", "_METADATA"),
                  os.path.join(step_dir, "state", "_sharding"),
                  *sorted(glob.glob(os.path.join(step_dir, "state", "array_metadatas", "*")))]
    for path in candidates:
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            return f"{path} is not valid JSON ({e}); the file is truncated or corrupted"
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"the array data under {os.path.join(step_dir, 'state')} cannot be read ({first_line[:200]})"


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with shardings for restoring `tree`'s structure."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
