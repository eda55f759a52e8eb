"""Training checkpoints with orbax: the train state (params, optimizer state, step, rng) plus JSON metadata
(the data iterator state and the recipe's shape fingerprint), the last N kept.

Restoring goes straight into the target shardings (never whole on one device). A checkpoint written by a
different recipe shape is refused with a message that names the differences.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from bard_jax.errors import BardError


class CheckpointMismatchError(BardError, ValueError):
    """A checkpoint that does not belong to this recipe (different model shape, objective or optimizer)."""


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any], force: bool = True) -> None:
        """Write `state` (a pytree of arrays) and `meta` (JSON-serialisable) as checkpoint `step`."""
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=force,
        )
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

    def close(self) -> None:
        self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with shardings for restoring `tree`'s structure."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
