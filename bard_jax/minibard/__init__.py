"""Mini-BARD: the whole BARD method end to end on the embedded synthetic task (`python -m bard_jax.minibard`)."""
