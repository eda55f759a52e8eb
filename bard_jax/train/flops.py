"""Model FLOPs of a training step, counted from the network's shape (what MFU is read against).

XLA's own cost analysis cannot be used for this: it counts the body of a `while` loop once, and the scanned layers
are one. The count here is of the matrix multiplications, 2 FLOPs per multiply-add, in the usual convention for
model FLOPs (PaLM, appendix B): every linear layer on every row it is applied to; attention as the query-key and
weight-value products of every query against every key of its sequence (text) or of its example's pixel rows
(vision), whatever the mask keeps; the LM head only where the objective applies it (its supervised slots); a
trained forward counts three times (forward, and the backward's two products); the frozen SWD teacher once. The
rows are those of the batch's static shapes, padding included: the figure is the work the compiled step is
shaped for. Rematerialisation is not counted (model FLOPs, not hardware FLOPs).

Letters: L tokens per sample, S supervised slots, P pixel rows per sample (images and videos together).
"""

from __future__ import annotations

import dataclasses

from bard_jax.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class ForwardFlops:
    """FLOPs of one forward of one sample, by part."""

    text_linear: int
    text_attention: int
    head: int
    vision_linear: int
    vision_attention: int

    @property
    def total(self) -> int:
        return self.text_linear + self.text_attention + self.head + self.vision_linear + self.vision_attention


def forward_flops(config: ModelConfig, tokens: int, head_rows: int, pixel_rows: int) -> ForwardFlops:
    """One sample's forward: `tokens` through the text layers, the LM head at `head_rows` positions, `pixel_rows`
    rows (a multiple of the merge unit) through the vision tower and its mergers."""
    t, v = config.text, config.vision
    q_width, kv_width = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    per_token = t.hidden_size * (2 * q_width + 2 * kv_width) + 3 * t.hidden_size * t.intermediate_size
    block = 4 * v.hidden_size * v.hidden_size + 2 * v.hidden_size * v.intermediate_size  # qkv, proj, fc1, fc2
    wide = v.hidden_size * v.merge_unit
    merger = wide * wide + wide * v.out_hidden_size
    windows = pixel_rows // v.merge_unit
    mergers = 1 + len(v.deepstack_visual_indexes)
    return ForwardFlops(
        text_linear=2 * tokens * per_token * t.num_hidden_layers,
        text_attention=4 * tokens * tokens * q_width * t.num_hidden_layers,
        head=2 * head_rows * t.hidden_size * t.vocab_size,
        vision_linear=2 * (pixel_rows * (v.patch_dim * v.hidden_size + v.depth * block) + windows * mergers * merger),
        vision_attention=4 * pixel_rows * pixel_rows * v.hidden_size * v.depth,
    )


def step_flops(config: ModelConfig, teacher: ModelConfig | None, *, samples: int, tokens: int, slots: int,
               pixel_rows: int) -> int:
    """Model FLOPs of one optimizer update: `samples` (the global batch) of `tokens` each, the head at `slots`
    positions, `pixel_rows` vision rows per sample; the student trained (x3), the teacher (if any) forward only."""
    student = forward_flops(config, tokens, slots, pixel_rows).total
    frozen = forward_flops(teacher, tokens, slots, pixel_rows).total if teacher is not None else 0
    return samples * (3 * student + frozen)
