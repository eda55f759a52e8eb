"""Mini-BARD ablation: `_stages.direct_b32` (see its docstring).

Launch:  python -m bard_jax.train --recipe recipes/minibard/direct_b32.py [--workdir DIR] [--recipe.steps=N]
(`python -m bard_jax.minibard --ablations` runs it after the main chain and evaluates it against its main stage.)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _stages import direct_b32  # noqa: E402


def get_config():
    return direct_b32()
