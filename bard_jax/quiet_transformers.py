"""transformers imported without its import-time advice that PyTorch is missing.

bard_jax uses transformers for tokenizers and chat templates only, and never needs torch; without torch, importing
transformers logs "PyTorch was not found. Models won't be available ..." on stderr, which every command would print.
That notice is one of transformers' "advisory" warnings, which it skips while TRANSFORMERS_NO_ADVISORY_WARNINGS is
set: it is set for the first import only, so the caller's own settings and later warnings are left alone.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

_FLAG = "TRANSFORMERS_NO_ADVISORY_WARNINGS"


def import_transformers() -> ModuleType:
    """The transformers module (imported quietly the first time)."""
    if "transformers" not in sys.modules:
        before = os.environ.get(_FLAG)
        os.environ[_FLAG] = "1"
        try:
            import transformers  # noqa: F401
        finally:
            if before is None:
                os.environ.pop(_FLAG, None)
            else:
                os.environ[_FLAG] = before
    return sys.modules["transformers"]
