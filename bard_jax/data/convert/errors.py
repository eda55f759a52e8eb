"""`ConvertError`: bad input to a conversion (a missing or foreign directory, a shard of another schema, an
unknown subset). It is a `DataError`, so the command line prints its message in one line without a traceback and
exits 1, as every bard_jax command does (`bard_jax.cli`). A conversion that finished except for some unreadable
shards exits `EXIT_FAILED_SHARDS` instead: a script can tell "fix the command" from "run it again to retry"."""

from __future__ import annotations

from bard_jax.data.processor import DataError

EXIT_FAILED_SHARDS = 3


class ConvertError(DataError):
    pass
