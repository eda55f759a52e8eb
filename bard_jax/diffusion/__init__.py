"""Block-diffusion training core: packed layout, corruption, losses, and `packed_logits`."""

from bard_jax.diffusion.layout import block_ids, collate_packed, pack_sample
from bard_jax.diffusion.losses import ObjectiveConfig, loss_fn
from bard_jax.diffusion.noise import NoiseConfig, corrupt_batch
from bard_jax.diffusion.packed import packed_logits

__all__ = [
    "NoiseConfig", "ObjectiveConfig", "block_ids", "collate_packed", "corrupt_batch", "loss_fn", "pack_sample",
    "packed_logits",
]
