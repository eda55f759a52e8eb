"""Mini-BARD ablation: `_stages.pbm_b4_shift` (see its docstring).

Launch:  python -m bard_jax.train --recipe recipes/minibard/pbm_b4_shift.py [--workdir DIR] [--recipe.steps=N]
(`python -m bard_jax.minibard --ablations` runs it after the main chain and evaluates it against its main stage.)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _stages import pbm_b4_shift  # noqa: E402


def get_config():
    return pbm_b4_shift()
