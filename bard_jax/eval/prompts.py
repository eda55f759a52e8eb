"""Prompts and answers as the release's lmms-eval wrapper (eval/lmms-eval/lmms_eval/models/simple/bard_vl.py)
builds and cleans them, with `interleave_visuals=False` (the setting of its eval script).

Prompt: a system turn "You are a helpful assistant.", then one user turn holding every image of the document
first and the task's prompt text after them (`Task.prompt`, which has removed a literal "<image>"; MMMU's
"<image 1>" references stay text).
Answer: the new tokens up to the first EOS (mask ids of unreached positions dropped), decoded without special
tokens, stripped, one trailing "." removed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from bard_jax.eval.task import SYSTEM_PROMPT


def chat_messages(images: list[Image.Image], text: str, system: str | None = SYSTEM_PROMPT) -> list[dict[str, Any]]:
    """The wrapper's messages for one document: the system turn (none when `system` is None), then images before
    the text, no interleaving."""
    content = [{"type": "image", "image": im} for im in images]
    content.append({"type": "text", "text": text})
    system_turn = [] if system is None else [{"role": "system", "content": system}]
    return [*system_turn, {"role": "user", "content": content}]


def special_ids(processor: Any) -> tuple[int, int]:
    """(mask id, EOS id): `Processor.mask_id()` (the tokenizer's `<|mask|>`, else the release's id) and
    `<|im_end|>`, as `python -m bard_jax.generate` takes them."""
    return processor.mask_id(), int(processor.im_end_id)


def answer_text(tokens: np.ndarray, tokenizer: Any, *, eos_id: int, mask_id: int | None) -> str:
    """One row of new tokens [N] -> the cleaned answer string."""
    row = np.asarray(tokens).reshape(-1)
    eos = np.flatnonzero(row == eos_id)
    row = row[: eos[0]] if len(eos) else row
    ids = [int(t) for t in row if mask_id is None or t != mask_id]
    answer = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return answer[:-1] if answer.endswith(".") else answer
