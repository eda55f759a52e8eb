"""Hosts agree on a batch's shapes before collating it.

In a run of several processes each host collates its own slice of every global batch, and the slices must have the
same shapes: the step is one SPMD program whose global arrays are assembled from the hosts' pieces. A host's own
slice decides nothing alone (one host may draw only text, the other an image; their longest samples differ), so
before collating, each host publishes what its slice needs (the longest sample, the longest response, the most
image and video pixel rows) and every host collates for the maxima over all of them: the same length bucket,
response slots and patch buckets, and pixel arrays on every host when any host has an image (zero rows where it has
none).

The agreement goes through jax.distributed's key-value store (the coordination service every multi-process jax run
has), not through a device collective: the data stream runs in the prefetch thread while the train step runs in the
main one, and collectives issued from two threads could reach the hosts in different orders and deadlock. Keys are
per batch number, so batches prepared ahead or re-prepared after a resume agree with the right ones.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

import jax

KEY_PREFIX = "bard_jax/batch_shapes"
# How long one wait on the store lasts before the stream checks whether it was interrupted (a closing run).
WAIT_SLICE_MS = 1000


class ShapeAgreement(Protocol):
    def maxima(self, batch_number: int, needs: Sequence[int]) -> tuple[int, ...]:
        """The element-wise maxima of every host's `needs` for this batch (each host passes the same length)."""
        ...


class LocalShapes:
    """One process: its own needs are the batch's."""

    def maxima(self, batch_number: int, needs: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(n) for n in needs)


class StoreShapes:
    """Several processes: each publishes its needs under `KEY_PREFIX/<batch>/<process>` in a key-value store with
    jax.distributed's client interface (`key_value_set`, `blocking_key_value_get`, `key_value_delete`) and reads
    everyone's. `interrupted`, once set, ends a wait with `Interrupted` (the stream is being closed)."""

    def __init__(self, client: Any, process_index: int, process_count: int,
                 interrupted: threading.Event | None = None):
        self.client = client
        self.process_index = process_index
        self.process_count = process_count
        self.interrupted = interrupted or threading.Event()

    def maxima(self, batch_number: int, needs: Sequence[int]) -> tuple[int, ...]:
        key = f"{KEY_PREFIX}/{batch_number}"
        mine = ",".join(str(int(n)) for n in needs)
        # A batch prepared again (after a prefetch was discarded) publishes the same values: overwriting is safe.
        self.client.key_value_set(f"{key}/{self.process_index}", mine, allow_overwrite=True)
        rows = [tuple(int(v) for v in self._get(f"{key}/{p}").split(",")) for p in range(self.process_count)]
        if any(len(r) != len(needs) for r in rows):
            raise RuntimeError(f"hosts disagree on what a batch's shape depends on: {rows} (batch {batch_number})")
        # Every host has read all keys of batch k - 2 once this one has read every key of batch k - 1 (a host
        # publishes batch k - 1 only after it finished reading batch k - 2), so this host's key for it can go.
        if batch_number >= 2:
            try:
                self.client.key_value_delete(f"{KEY_PREFIX}/{batch_number - 2}/{self.process_index}")
            except Exception:  # noqa: BLE001 - a key already gone costs nothing
                pass
        return tuple(max(col) for col in zip(*rows))

    def _get(self, key: str) -> str:
        while True:
            if self.interrupted.is_set():
                raise Interrupted(f"stopped while waiting for the other hosts' batch shapes ({key})")
            try:
                return self.client.blocking_key_value_get(key, WAIT_SLICE_MS)
            except Exception as e:  # noqa: BLE001 - jaxlib raises its own error type for a timed-out wait
                if "DEADLINE_EXCEEDED" not in str(e) and "timed out" not in str(e).lower():
                    raise


class Interrupted(Exception):
    """A wait for the other hosts ended because the stream is closing (control flow, like `StopRequested`)."""


def agreed_shapes(interrupted: threading.Event | None = None) -> ShapeAgreement:
    """`LocalShapes` in a single-process run, else `StoreShapes` on jax.distributed's key-value store."""
    if jax.process_count() == 1:
        return LocalShapes()
    from jax._src import distributed  # the store's client has no public accessor; orbax reads it the same way

    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("several jax processes but no jax.distributed client: call jax.distributed.initialize")
    return StoreShapes(client, jax.process_index(), jax.process_count(), interrupted)
