"""How fast the `mini` vision tower learns to read the digits when it is told the answer directly.

A randomly initialised `mini` tower plus a linear head on each merged window (one window is one 32-px cell) is
trained with Adam to classify the digit of every occupied cell, on freshly drawn scenes (their own seed; 2 x 3
scenes only, so every batch has one shape). Prints the held-out digit accuracy every 100 steps. Set against the AR
source, which gets the digits only through the language model, this separates "the tower cannot see them" from
"the language model does not ask for them".

  python benchmarks/train_digit_readout.py [--steps 600] [--lr 1e-3] [--scenes 4000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bard_jax.config import preset
from bard_jax.data import Processor, synthetic
from bard_jax.model.inputs import vision_inputs
from bard_jax.model.vlm import Qwen3VL
from bard_jax.modeling import init_params, network

BATCH = 16
COLS = 3


def scenes_with_labels(rng: np.random.Generator, n: int, proc: Processor) -> tuple[np.ndarray, np.ndarray]:
    """pixel rows [n, 24, D] of n 2 x 3 scenes and each cell's digit [n, 6] (-1: empty), row-major."""
    pixels, digits = [], []
    while len(pixels) < n:
        img, objects = synthetic.draw_scene(rng)
        if img.width != COLS * synthetic.CELL:
            continue
        enc = proc.encode_chat([{"role": "user", "content": [{"type": "image", "image": img}]}])
        label = np.full(2 * COLS, -1)
        for o in objects:
            label[synthetic.ROWS.index(o["row"]) * COLS + synthetic.COLS[COLS].index(o["col"])] = o["number"]
        pixels.append(enc["pixel_values"])
        digits.append(label)
    return np.stack(pixels), np.stack(digits)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--scenes", type=int, default=4000)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        synthetic.build_tokenizer(tmp)
        proc = Processor.from_pretrained(tmp)
    rng = np.random.default_rng(a.seed)
    train_x, train_y = scenes_with_labels(rng, a.scenes, proc)
    test_x, test_y = scenes_with_labels(rng, 20 * BATCH, proc)
    cfg = preset("mini")
    net = network(cfg, jnp.float32)
    params = {"tower": init_params(cfg, jax.random.key(0)),
              "head": jnp.zeros((cfg.vision.out_hidden_size, 10), jnp.float32)}
    grids = np.tile(np.array([[1, 4, 2 * COLS]]), (BATCH, 1))

    def loss_and_accuracy(params, pixels_bpc, digits_bm):
        vis = vision_inputs(cfg, pixels_bpc.reshape(-1, pixels_bpc.shape[-1]), grids)
        windows_md, _ = net.apply({"params": params["tower"]}, vis.pixels_pc, vis.meta, method=Qwen3VL.encode_vision)
        logits = windows_md @ params["head"]
        labels = digits_bm.reshape(-1)
        occupied = labels >= 0
        logp = jax.nn.log_softmax(logits)[jnp.arange(labels.shape[0]), jnp.maximum(labels, 0)]
        right = (logits.argmax(-1) == labels) & occupied
        return -jnp.sum(logp * occupied) / jnp.sum(occupied), jnp.sum(right) / jnp.sum(occupied)

    opt = optax.adam(a.lr)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, pixels, digits):
        (loss, _), grads = jax.value_and_grad(loss_and_accuracy, has_aux=True)(params, pixels, digits)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    evaluate = jax.jit(loss_and_accuracy)
    t0 = time.time()
    print(f"mini tower from random weights, Adam lr {a.lr}, batches of {BATCH} scenes, {a.scenes} training scenes")
    for i in range(a.steps):
        j = (i * BATCH) % (len(train_x) - BATCH)
        params, opt_state, loss = step(params, opt_state, train_x[j:j + BATCH], train_y[j:j + BATCH])
        if (i + 1) % 100 == 0:
            acc = np.mean([float(evaluate(params, test_x[k:k + BATCH], test_y[k:k + BATCH])[1])
                           for k in range(0, len(test_x), BATCH)])
            print(f"step {i + 1:5d}  train loss {float(loss):.3f}  held-out digit accuracy {acc:.3f}  "
                  f"{time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
