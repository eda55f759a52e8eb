"""The error the eval package raises for bad input: a missing dataset, a malformed file, an undecodable image.

It derives from `BardError` so that the command line prints it as one line without a traceback, and from
`ValueError` so that callers catching the builtin keep working.
"""

from __future__ import annotations

from bard_jax.errors import BardError


class EvalError(BardError, ValueError):
    """A benchmark input that cannot be used: the message names the task, file, column or value at fault."""
