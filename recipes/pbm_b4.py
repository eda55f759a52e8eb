"""Stage 1 (progressive block merging), block size 4, from the AR source model.

Launch:  BARD_SIZE=4b python -m bard_jax.train --recipe recipes/pbm_b4.py [--recipe.model.init_from=DIR]
The release ran this stage at sizes 2b, 4b and 8b; BARD_SIZE picks one (default 4b).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _common import SOURCES, pbm  # noqa: E402

SIZE = os.environ.get("BARD_SIZE", "4b")


def get_config():
    return pbm(SIZE, 4, init_from=SOURCES[SIZE])
