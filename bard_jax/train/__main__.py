"""python -m bard_jax.train --recipe recipes/NAME.py [--workdir DIR] [--dry-run] [--recipe.KEY=VALUE ...]"""

import sys

from bard_jax import cli
from bard_jax.train.loop import main

sys.exit(cli.run(main, prog="python -m bard_jax.train"))
