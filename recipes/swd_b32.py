"""Stage 2 (stage-wise distillation), student block size 32, teacher: the B4 8B anchor (block size 4).

The student starts from the same-size PBM B32 stage. swd_b32 is the release's 4B student.
Launch:  BARD_SIZE=4b python -m bard_jax.train --recipe recipes/swd_b32.py [--recipe.objective.teacher_init_from=DIR]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _common import swd  # noqa: E402

SIZE = os.environ.get("BARD_SIZE", "4b")


def get_config():
    return swd(SIZE, 32)
