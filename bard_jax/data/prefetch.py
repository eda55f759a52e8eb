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
import threading
from typing import Any, Protocol

from bard_jax.data.pipeline import StopRequested
from bard_jax.errors import InputError

# How often a wait for the worker thread looks at the stop event: a stop is noticed within this time.
WAIT_SLICE_SECONDS = 0.1


class BatchStream(Protocol):
    def next_batch(self) -> dict[str, Any]: ...
    def get_state(self) -> dict[str, Any]: ...
    def set_state(self, state: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class Prefetcher:
    """`depth` batches of `stream` prepared ahead; same interface as the stream (next_batch, get/set_state, close).

    Nothing is prepared before the first `next_batch()`, so `set_state()` right after construction (a resume)
    costs nothing. An exception raised while preparing a batch is raised by the `next_batch()` that asks for it, and
    nothing more is prepared after it (the stream's state stays as the failure left it).

    `stop_event` (default: the stream's own `stop_event`, if it has one; a stream without one is given this one):
    once set, a `next_batch()` whose batch is not ready raises `StopRequested` within about `WAIT_SLICE_SECONDS`
    instead of waiting; the state stays that of the last batch handed out. `close()` also stops a stream that is
    searching for usable samples (streams with an `interrupt()` method), so it does not wait for the search.
    """

    def __init__(self, stream: BatchStream, depth: int = 1, stop_event: threading.Event | None = None):
        if depth < 1:
            raise InputError(f"prefetch depth must be >= 1, got {depth}")
        self.stream = stream
        self.depth = depth
        if stop_event is None:
            stop_event = getattr(stream, "stop_event", None)
        elif getattr(stream, "stop_event", stop_event) is None:
            stream.stop_event = stop_event  # the worker thread's search stops on it too
        self.stop_event = stop_event
        self._state = stream.get_state()
        self._pending: collections.deque[concurrent.futures.Future] = collections.deque()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bard_jax-data")
        self._closed = False
        self._failed = threading.Event()  # set when preparing a batch raised
        # Guards _pending and _closed; reentrant so that a close() from a signal handler cannot deadlock.
        self._lock = threading.RLock()

    def _produce(self) -> tuple[dict[str, Any], dict[str, Any]]:
        # Once a batch has failed, the batches queued behind it are not prepared: the stream is left as the failure
        # left it (its skip counts, say), and the error is what `next_batch()` raises.
        if self._failed.is_set():
            raise StopRequested("an earlier batch failed to be prepared")
        try:
            batch = self.stream.next_batch()
        except BaseException:
            self._failed.set()
            raise
        return batch, copy.deepcopy(self.stream.get_state())

    def _stopping(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()

    def next_batch(self) -> dict[str, Any]:
        with self._lock:  # close() may run on another thread
            if self._closed:
                raise StopRequested("the prefetcher is closed")
            if not self._stopping():
                while len(self._pending) < self.depth + 1:  # the one handed out now, then `depth` ahead
                    self._pending.append(self._worker.submit(self._produce))
            if not self._pending:
                raise StopRequested("stop requested before the next training batch was prepared")
            head = self._pending[0]
        # Wait in short slices rather than in one blocking result(): a stop request must end the wait even when
        # the worker is still searching for usable samples.
        while not head.done():
            if self._stopping():
                raise StopRequested("stop requested while waiting for the next training batch")
            concurrent.futures.wait([head], timeout=WAIT_SLICE_SECONDS)
        with self._lock:
            if self._pending and self._pending[0] is head:
                self._pending.popleft()
            if self._closed or head.cancelled():
                raise StopRequested("the prefetcher was closed while waiting for the next training batch")
        batch, self._state = head.result()
        return batch

    def get_state(self) -> dict[str, Any]:
        return copy.deepcopy(self._state)

    def set_state(self, state: dict[str, Any]) -> None:
        self._discard_pending()
        self._failed.clear()
        self.stream.set_state(state)
        self._state = copy.deepcopy(self.stream.get_state())

    def close(self) -> None:
        with self._lock:
            self._closed = True
        interrupt = getattr(self.stream, "interrupt", None)
        if interrupt is not None:
            interrupt()  # a batch being prepared ends at its next example instead of being finished
        self._discard_pending()
        self._worker.shutdown(wait=True)
        self.stream.close()

    def _discard_pending(self) -> None:
        """Drop the batches prepared ahead (the worker finishes the one it is on first)."""
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
        concurrent.futures.wait([f for f in pending if not f.cancel()])  # cancel() fails once started
