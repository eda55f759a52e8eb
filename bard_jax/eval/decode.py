"""One batch of encoded prompts -> new tokens and decode statistics per document, with either decoder.

Letters: B documents in the batch, T padded prompt length, N new tokens.

Prompts are left-padded (the decoders need the last column real) to a bucketed length, so that batches of similar
prompts share one compiled program; images go in transformers' concatenated layout, which the decoders regroup
per example (pixel rows rounded up to powers of two there, for the same reason).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from bard_jax.sampler.ar import ARConfig

MIN_BUCKET = 32


@dataclasses.dataclass(frozen=True)
class Decoded:
    """One document's decode: its new tokens [N] and statistics (forwards, tokens up to EOS, tokens per forward,
    denoising forwards)."""

    tokens: np.ndarray
    nfe: int
    generated_tokens: int
    tokens_per_forward: float
    denoising_forwards: int  # forwards that chose tokens (AR: one per token; diffusion: no separate prefill/commit)


def decoder_config(settings: dict[str, Any], mask_id: int, eos_id: int) -> Any:
    """A task's recorded settings (`RunSettings.for_task`) -> `bj.SamplingConfig` or `ARConfig` (greedy, as the
    release's eval: temperature 0, no top-k / top-p)."""
    if settings["decoder"] == "ar":
        return ARConfig(max_new_tokens=settings["max_new_tokens"], eos_token_id=eos_id)
    import bard_jax as bj

    return bj.SamplingConfig(
        max_new_tokens=settings["max_new_tokens"], block_size=settings["block_size"],
        denoising_steps=settings["denoising_steps"], strategy=settings["strategy"],
        confidence_threshold=settings["confidence_threshold"], mask_token_id=mask_id, eos_token_id=eos_id,
        commit=settings.get("commit") or "fold", shift_labels=bool(settings.get("shift_labels", False)),
    )


def prompt_bucket(length: int) -> int:
    """`length` rounded up to a multiple of 2**(floor(log2 length) - 3), at least MIN_BUCKET: at most 1/8 of a row
    is padding, and a task's prompts fall into a handful of lengths (one compilation each)."""
    if length <= MIN_BUCKET:
        return MIN_BUCKET
    step = 1 << max(length.bit_length() - 4, 0)
    return -(-length // step) * step


def collate(encodings: list[dict[str, np.ndarray]], pad_id: int) -> dict[str, Any]:
    """Encoded single prompts (`Processor.encode_chat`: input_ids [1, T_i], pixel_values [P_i, C], image_grid_thw
    [I_i, 3]) -> one batch: input_ids / attention_mask [B, T] left-padded, pixel_values [sum P_i, C] and
    image_grid_thw [sum I_i, 3] in row order (None when no prompt has an image)."""
    lengths = [e["input_ids"].shape[1] for e in encodings]
    t = prompt_bucket(max(lengths))
    ids = np.full((len(encodings), t), pad_id, np.int32)
    mask = np.zeros((len(encodings), t), np.int32)
    for row, (e, n) in enumerate(zip(encodings, lengths)):
        ids[row, t - n:] = e["input_ids"][0]
        mask[row, t - n:] = 1
    with_images = [e for e in encodings if "pixel_values" in e]
    batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "pixel_values": None, "image_grid_thw": None}
    if with_images:
        batch["pixel_values"] = np.concatenate([e["pixel_values"] for e in with_images])
        batch["image_grid_thw"] = np.concatenate([e["image_grid_thw"] for e in with_images])
    return batch


def decode_batch(model: Any, encodings: list[dict[str, np.ndarray]], config: Any, pad_id: int) -> list[Decoded]:
    """Decode B prompts in one call; returns one `Decoded` per prompt, in order."""
    batch = collate(encodings, pad_id)
    if isinstance(config, ARConfig):
        from bard_jax.sampler.ar import generate_ar

        out = generate_ar(model, batch["input_ids"], config, attention_mask=batch["attention_mask"],
                          pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"])
        made = np.asarray(out.stats["generated_tokens"])
        # One forward per token (the prefill gives the first): a row's own forwards, not the batch's longest.
        nfe, per_forward, denoising = made, np.ones(made.shape), made
    else:
        import bard_jax as bj

        out = bj.generate(model, batch["input_ids"], config, attention_mask=batch["attention_mask"],
                          pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"])
        made = np.asarray(out.stats["generated_tokens"])
        nfe, per_forward = np.asarray(out.stats["nfe"]), np.asarray(out.stats["tokens_per_forward"])
        denoising = np.asarray(out.stats["denoising_forwards"])
    tokens = np.asarray(out.tokens)
    return [Decoded(tokens[i], int(nfe[i]), int(made[i]), float(per_forward[i]), int(denoising[i]))
            for i in range(len(encodings))]
