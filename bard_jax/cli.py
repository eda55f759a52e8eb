"""What every bard_jax command line does with errors and exit statuses.

    sys.exit(cli.run(main, prog="python -m bard_jax.train"))

`run` calls `main(argv)` and turns an error of ours (`BardError`, or an `OSError` such as an unwritable output
directory) into one line on stderr and exit status 1 (or the error's `exit_status`), without a traceback.
`--debug` anywhere on the command line, or `BARD_JAX_DEBUG=1` in the environment, lets the traceback through.
Anything else is a bug and is not caught.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from bard_jax.errors import BardError

EXIT_OK = 0
EXIT_ERROR = 1
# A training run that stopped before its last step (SIGTERM / SIGINT, or stop_at_step): its checkpoint is saved and
# re-running the same command resumes, but there is no export yet, so `train && next_stage` must not go on.
# 75 is EX_TEMPFAIL in sysexits.h: "try again later".
EXIT_STOPPED = 75
DEBUG_FLAG = "--debug"
DEBUG_HELP = "show the Python traceback of an error (also BARD_JAX_DEBUG=1)"


def debug_requested(argv: list[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get("BARD_JAX_DEBUG", "") not in ("", "0")


def run(main: Callable[[list[str]], int], prog: str, argv: list[str] | None = None) -> int:
    """`main(argv)`'s exit status; an error of ours becomes `prog: error: MESSAGE` and status 1."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return main(argv)
    except (BardError, OSError) as e:
        if debug_requested(argv):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        print(f"{prog}: (run with {DEBUG_FLAG} for the traceback)", file=sys.stderr)
        return getattr(e, "exit_status", EXIT_ERROR)
