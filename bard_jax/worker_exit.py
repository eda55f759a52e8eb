"""Worker processes that end with the process that started them.

A `ProcessPoolExecutor` worker whose parent is killed (`kill -9`, the OOM killer) finishes the task it holds
before it notices, and a data converter's task is a whole shard: it would go on writing files that no process
will commit. `die_with_parent()`, called first in a worker's initializer, ends the worker as soon as its parent is
gone: on Linux through the kernel (`prctl(PR_SET_PDEATHSIG, SIGKILL)`), elsewhere by a thread watching the parent
id.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # the parent died before the request took effect
                os._exit(1)
            return
    threading.Thread(target=_watch, args=(parent,), daemon=True, name="die-with-parent").start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
