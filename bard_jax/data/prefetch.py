"""Prepare the next training batches in a background thread while the device runs the current step.

The wrapped stream is only ever advanced by one worker thread, in order, so the batches are exactly the stream's
own sequence. `get_state()` is the stream's state right after the last batch handed out (not after the batches
prepared ahead), so a checkpoint taken between steps resumes at the right batch. Decoding PNGs, tokenizing and
packing run in numpy, PIL and the Rust tokenizer, which release the GIL for most of their work; on a CPU host the
thread shares the cores with XLA, and what it buys there is the Python time between steps.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
from typing import Any, Protocol

from bard_jax.errors import InputError


class BatchStream(Protocol):
    def next_batch(self) -> dict[str, Any]: ...
    def get_state(self) -> dict[str, Any]: ...
    def set_state(self, state: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class Prefetcher:
    """`depth` batches of `stream` prepared ahead; same interface as the stream (next_batch, get/set_state, close).

    Nothing is prepared before the first `next_batch()`, so `set_state()` right after construction (a resume)
    costs nothing. An exception raised while preparing a batch is raised by the `next_batch()` that asks for it.
    """

    def __init__(self, stream: BatchStream, depth: int = 1):
        if depth < 1:
            raise InputError(f"prefetch depth must be >= 1, got {depth}")
        self.stream = stream
        self.depth = depth
        self._state = stream.get_state()
        self._pending: collections.deque[concurrent.futures.Future] = collections.deque()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bard_jax-data")

    def _produce(self) -> tuple[dict[str, Any], dict[str, Any]]:
        batch = self.stream.next_batch()
        return batch, copy.deepcopy(self.stream.get_state())

    def next_batch(self) -> dict[str, Any]:
        while len(self._pending) < self.depth + 1:  # the one handed out now, then `depth` ahead
            self._pending.append(self._worker.submit(self._produce))
        batch, self._state = self._pending.popleft().result()
        return batch

    def get_state(self) -> dict[str, Any]:
        return copy.deepcopy(self._state)

    def set_state(self, state: dict[str, Any]) -> None:
        self._discard_pending()
        self.stream.set_state(state)
        self._state = copy.deepcopy(self.stream.get_state())

    def close(self) -> None:
        self._discard_pending()
        self._worker.shutdown(wait=True)
        self.stream.close()

    def _discard_pending(self) -> None:
        """Drop the batches prepared ahead (the worker finishes the one it is on first)."""
        concurrent.futures.wait([f for f in self._pending if not f.cancel()])  # cancel() fails once started
        self._pending.clear()
