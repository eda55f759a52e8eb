"""Mini-BARD: the AR source model (next-token loss) trained from random weights on the synthetic task.

Launch:  python -m bard_jax.train --recipe recipes/minibard/ar.py [--workdir DIR] [--recipe.steps=N]
(`python -m bard_jax.minibard` runs the whole chain and the evaluation.)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _stages import ar  # noqa: E402


def get_config():
    return ar()
