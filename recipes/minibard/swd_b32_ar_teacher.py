"""Mini-BARD ablation: `_stages.swd_b32_ar_teacher` (see its docstring).

Launch:  python -m bard_jax.train --recipe recipes/minibard/swd_b32_ar_teacher.py [--workdir DIR] [--recipe.steps=N]
(`python -m bard_jax.minibard --ablations` runs it after the main chain and evaluates it against its main stage.)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _stages import swd_b32_ar_teacher  # noqa: E402


def get_config():
    return swd_b32_ar_teacher()
