"""Files written whole or not at all: a reader (another process, the next run after a kill) never sees half a file.

The content goes to a temporary file beside the target, which is renamed over it when the writing finished; on an
error the temporary file is removed and the target is left as it was. (Whole folders: `bard_jax.atomic_dir`.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import IO


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", tmp: str | None = None) -> Iterator[IO]:
    """Open `path` for writing through `tmp` (default `<path>.tmp-<pid>`, so concurrent writers never share one),
    created with the usual permissions; renamed into place when the block ends without an error."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = tmp or f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str, tmp: str | None = None) -> None:
    """Write `data` (bytes, or text as UTF-8) to `path` whole (see `atomic_file`)."""
    with atomic_file(path, "wb", tmp) as f:
        f.write(data.encode() if isinstance(data, str) else data)
