"""The errors bard_jax raises for a user's mistake or bad input.

Every such error derives from `BardError`, and its message names the file, key or value at fault. The command
lines (`bard_jax.cli.run`) print these messages as one line and exit non-zero without a traceback; anything else
is a bug and keeps its traceback. The concrete classes also derive from the builtin they refine (`ValueError`,
`RuntimeError`), so `except ValueError` in user code keeps working.
"""

from __future__ import annotations


class BardError(Exception):
    """Base of every error that reports bad input or an impossible setting (not a bug)."""


class InputError(BardError, ValueError):
    """An argument of a public function that cannot be used as given (shape, dtype, range, type)."""


class TrainingError(BardError, RuntimeError):
    """A training run that cannot start or must stop (bad setup, a workdir in use, non-finite loss)."""
