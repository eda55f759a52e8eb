"""Mini-BARD stage 1: PBM at block size 32, from PBM B16.

Launch:  python -m bard_jax.train --recipe recipes/minibard/pbm_b32.py [--workdir DIR] [--recipe.steps=N]
(`python -m bard_jax.minibard` runs the whole chain and the evaluation.)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _stages import pbm  # noqa: E402


def get_config():
    return pbm(32)
