"""Mini-BARD stage 2: SWD student at block size 16 (from PBM B16), teacher the PBM B4 anchor.

Launch:  python -m bard_jax.train --recipe recipes/minibard/swd_b16.py [--workdir DIR] [--recipe.steps=N]
(`python -m bard_jax.minibard` runs the whole chain and the evaluation.)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _stages import swd  # noqa: E402


def get_config():
    return swd(16)
