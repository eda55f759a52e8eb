"""Does the digit reach the answer? A linear probe on the language model's last hidden state for "what number"
questions.

Draws fresh scenes (their own seed, none a training scene), asks one "what number" question about each (by shape
or by cell, as the task does), and takes the final-norm hidden state at the last prompt position, the one whose
logits give the answer. Reports the model's own answer accuracy, a least-squares probe's held-out accuracy for the
asked digit from that state (80% fit, 20% scored), and the digit's share of the state's variance. A probe near
chance means the digit never gets to the answer position: what is missing is the lookup and copy inside the
language model, not the unembedding.

  python benchmarks/probe_answer.py --model runs/minibard/ar [--scenes 1500]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from probe_vision import least_squares_accuracy, load_model, variance_share

import bard_jax as bj
from bard_jax.data import synthetic
from bard_jax.model.attention import TokenInfo
from bard_jax.model.inputs import text_positions, vision_inputs, window_index
from bard_jax.model.vlm import Qwen3VL
from bard_jax.modeling import network


def number_question(rng: np.random.Generator, objects: list[dict]) -> tuple[str, int]:
    """A "what number" question about the scene, drawn as the task draws them."""
    while True:
        qtype, question, answer = synthetic.make_question(rng, objects)
        if qtype == "number":
            return question, int(answer)


def answer_state_fn(model: bj.Model):
    """jit(ids [1, T], pixels, meta, grid) -> (last hidden state [D], last logits [V]); one image per prompt."""
    net = network(model.config, jnp.float32)
    params = {"params": model.params}

    @jax.jit
    def fn(ids, pixels, meta, grid):
        mask = jnp.ones_like(ids, bool)
        positions, _ = text_positions(model.config, ids, mask, grid, None)
        vision = net.apply(params, pixels, meta, method=Qwen3VL.encode_vision)
        x, deep = net.apply(params, ids, vision, window_index(model.config, ids, 1), method=Qwen3VL.embed)
        h, _ = net.apply(params, x, positions, TokenInfo.causal(mask), deep, method=Qwen3VL.decode)
        return h[0, -1], net.apply(params, h[:, -1], method=Qwen3VL.logits)[0]

    return fn


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an export directory or a training workdir (its export/)")
    p.add_argument("--scenes", type=int, default=1500)
    p.add_argument("--seed", type=int, default=777)
    a = p.parse_args(argv)
    model, proc, path = load_model(a.model)
    digit_ids = np.asarray([proc.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)])
    state_fn = answer_state_fn(model)
    rng = np.random.default_rng(a.seed)
    states, digits, answers, by_shape = [], [], [], []
    for _ in range(a.scenes):
        img, objects = synthetic.draw_scene(rng)
        question, digit = number_question(rng, objects)
        enc = proc.encode_chat([{"role": "user", "content": [{"type": "image", "image": img},
                                                             {"type": "text", "text": question}]}])
        vis = vision_inputs(model.config, enc["pixel_values"], enc["image_grid_thw"])
        h, logits = state_fn(jnp.asarray(enc["input_ids"], jnp.int32), vis.pixels_pc, vis.meta,
                             jnp.asarray(enc["image_grid_thw"]))
        states.append(np.asarray(h))
        digits.append(digit)
        answers.append(int(np.argmax(np.asarray(logits)[digit_ids])))
        by_shape.append(" on the " in question)
    x, y, answer, shape = np.stack(states), np.asarray(digits), np.asarray(answers), np.asarray(by_shape)
    split = int(0.8 * len(y))
    print(f"{a.scenes} 'what number' questions on fresh scenes; model {path}")
    right = answer == y
    print(f"model's answer (best digit token): {np.mean(right):.3f} (by shape {np.mean(right[shape]):.3f}, "
          f"by cell {np.mean(right[~shape]):.3f}); chance 0.100")
    print(f"probe for the asked digit from the answer position's hidden state: "
          f"{least_squares_accuracy(x[:split], y[:split], x[split:], y[split:], 10):.3f}")
    print(f"digit share of that state's variance: {variance_share(x, y):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
