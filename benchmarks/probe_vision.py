"""What the vision tower hands the language model: linear probes for the digit and the shape in each cell.

Draws fresh synthetic scenes (their own seed, so none is a training scene), runs the model's vision tower, and fits
a least-squares classifier from each occupied cell's merged window (the vector that replaces one image pad token;
with 16-px patches merged 2 x 2, one window is exactly one 32-px cell) to the cell's digit and shape. 80% of the
scenes fit the probe, the rest score it. The same probe on a randomly initialised tower of the same config is the
baseline: if a trained tower scores below it, training threw information away.

The probe standardises every feature, so it also finds a class in directions of tiny variance, which the language
model's unnormalised maps hardly see. So the table also gives each attribute's share of the windows' variance: the
between-class variance (of the class means around the overall mean) over the total.

  python benchmarks/probe_vision.py --model runs/minibard/ar [--scenes 3000]

--model is an export directory or a training workdir (its export/ is used).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import bard_jax as bj
from bard_jax.data import Processor, synthetic
from bard_jax.model.inputs import vision_inputs
from bard_jax.model.vlm import Qwen3VL
from bard_jax.modeling import init_params, network
from bard_jax.train.setup import resolve_weights


def cell_features(model: bj.Model, proc: Processor, scenes: list) -> tuple[list, list]:
    """Per scene, [cells, D] merged windows and [cells, J*D] deepstack windows, in row-major cell order."""
    net = network(model.config, jnp.float32)
    encode = jax.jit(lambda pix, meta: net.apply({"params": model.params}, pix, meta, method=Qwen3VL.encode_vision))
    merged, deep = [], []
    for img, _ in scenes:
        enc = proc.encode_chat([{"role": "user", "content": [{"type": "image", "image": img}]}])
        vi = vision_inputs(model.config, enc["pixel_values"], enc["image_grid_thw"])
        m_md, d_jmd = encode(vi.pixels_pc, vi.meta)
        merged.append(np.asarray(m_md))
        deep.append(np.asarray(d_jmd).transpose(1, 0, 2).reshape(m_md.shape[0], -1))
    return merged, deep


def labels(scenes: list) -> tuple[list, list, list]:
    """Per scene, the digit, the shape index and the colour index of each cell (-1 for an empty cell), row-major."""
    digits, shapes, colors = [], [], []
    for img, objects in scenes:
        cols = img.width // synthetic.CELL
        names = synthetic.COLS[cols]
        d, s, c = (np.full(2 * cols, -1) for _ in range(3))
        for o in objects:
            k = synthetic.ROWS.index(o["row"]) * cols + names.index(o["col"])
            d[k], s[k], c[k] = o["number"], synthetic.SHAPES.index(o["shape"]), list(synthetic.COLORS).index(o["color"])
        digits.append(d)
        shapes.append(s)
        colors.append(c)
    return digits, shapes, colors


def variance_share(x: np.ndarray, y: np.ndarray) -> float:
    """Between-class over total variance of the rows of x [n, D] grouped by y [n]."""
    mean = x.mean(0)
    between = sum(np.sum((x[y == c].mean(0) - mean) ** 2) * np.sum(y == c) for c in np.unique(y))
    return float(between / np.sum((x - mean) ** 2))


def least_squares_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                           classes: int) -> float:
    """Held-out accuracy of a one-vs-all least-squares classifier on standardised features. The ridge term only
    keeps the solve stable: a direction with little variance counts as much as a large one, as it can for the
    language model's own linear maps."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    a = np.concatenate([(x_train - mean) / std, np.ones((len(x_train), 1))], 1)
    b = np.concatenate([(x_test - mean) / std, np.ones((len(x_test), 1))], 1)
    w = np.linalg.solve(a.T @ a + 1e-3 * np.eye(a.shape[1]), a.T @ np.eye(classes)[y_train])
    return float(np.mean((b @ w).argmax(1) == y_test))


def occupied(feats: list, ys: list) -> tuple[np.ndarray, np.ndarray]:
    """The rows of every scene's cells stacked, keeping only the cells that hold a shape."""
    x, y = np.concatenate(feats), np.concatenate(ys)
    return x[y >= 0], y[y >= 0]


def probe(model: bj.Model, proc: Processor, scenes: list) -> dict[str, float]:
    merged, deep = cell_features(model, proc, scenes)
    digits, shapes, colors = labels(scenes)
    split = int(0.8 * len(scenes))
    both = [np.concatenate(pair, 1) for pair in zip(merged, deep)]
    out = {}
    for feat_name, feats in (("merged", merged), ("merged+deepstack", both)):
        for label_name, ys, classes in (("digit", digits, 10), ("shape", shapes, 4)):
            x_tr, y_tr = occupied(feats[:split], ys[:split])
            x_te, y_te = occupied(feats[split:], ys[split:])
            out[f"{label_name} from {feat_name}"] = least_squares_accuracy(x_tr, y_tr, x_te, y_te, classes)
    for label_name, ys in (("digit", digits), ("shape", shapes), ("colour", colors)):
        out[f"{label_name} share of variance"] = variance_share(*occupied(merged, ys))
    norms = np.concatenate([np.linalg.norm(m, axis=1) for m in merged])
    out["mean merged-window norm"] = float(norms.mean())
    return out


def load_model(model_dir: str) -> tuple[bj.Model, Processor, str]:
    """The model and processor of an export directory or of a training workdir (its export/), and the path used."""
    path = resolve_weights(model_dir)
    return bj.load_pretrained(path), Processor.from_pretrained(path), path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--scenes", type=int, default=3000)
    p.add_argument("--seed", type=int, default=12345)
    a = p.parse_args(argv)
    trained, proc, path = load_model(a.model)
    rng = np.random.default_rng(a.seed)
    scenes = [synthetic.draw_scene(rng) for _ in range(a.scenes)]
    random_init = bj.Model(init_params(trained.config, jax.random.key(0)), trained.config)
    results = {"trained": probe(trained, proc, scenes), "random init": probe(random_init, proc, scenes)}
    keys = list(results["trained"])
    print(f"{a.scenes} scenes, probe fit on 80%, scored on 20%; model {path}")
    print(f"| {'':28s} | trained | random init |")
    for k in keys:
        print(f"| {k:28s} | {results['trained'][k]:7.3f} | {results['random init'][k]:11.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
