"""Turn SIGTERM / SIGINT into a flag the loop reads after each step, so it can checkpoint and exit cleanly.

Reading it costs nothing (a host flag). In a multi-process run the flag is this process's vote: it rides into the
next step, and the processes stop together once they read the agreed vote (loop.Loop.stopping).
"""

from __future__ import annotations

import signal
import threading


class StopFlag:
    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name = ""
        self._previous: dict[int, object] = {}

    def install(self) -> StopFlag:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.signal_name = signal.Signals(signum).name
        self._event.set()

    def request(self) -> None:
        self._event.set()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def stop(self) -> bool:
        return self._event.is_set()

    @property
    def event(self) -> threading.Event:
        """The flag as an event, for code that waits (the data stream ends a wait for usable samples on it)."""
        return self._event
