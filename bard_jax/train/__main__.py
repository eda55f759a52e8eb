"""python -m bard_jax.train --recipe recipes/NAME.py [--workdir DIR] [--dry-run] [--recipe.KEY=VALUE ...]"""

import sys

from bard_jax.train.loop import main

sys.exit(main())
