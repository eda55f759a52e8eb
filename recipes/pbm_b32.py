"""Stage 1 (progressive block merging), block size 32, from the B16 stage's output.

Launch:  BARD_SIZE=4b python -m bard_jax.train --recipe recipes/pbm_b32.py [--recipe.model.init_from=DIR]
The release ran this stage at sizes 4b; BARD_SIZE picks one (default 4b).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _common import RUNS, pbm  # noqa: E402

SIZE = os.environ.get("BARD_SIZE", "4b")


def get_config():
    return pbm(SIZE, 32, init_from=os.path.join(RUNS, f"pbm_b16_{SIZE}"))
