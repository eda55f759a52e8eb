"""Two processes whose local data differ (every global batch gives one host the image sample and the other the
longer text-only one) build identical batch shapes, agreeing through jax.distributed's key-value store, and train
exactly like one process holding the whole batch on the same two devices.

Without the agreement each host would collate its own slice (one with pixel arrays, one without, different length
buckets) and the processes would compile different steps: the run would hang or fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from test_train import REPO, losses
from test_train_distributed import finish, free_port

from bard_jax.data.pipeline import read_jsonl
from bard_jax.data.synthetic import generate


def data_with_one_image_and_one_long_text(root) -> str:
    syn = generate(str(root / "syn"), n=4, seed=5, n_eval=2)
    records, _ = read_jsonl(os.path.join(syn, "train.jsonl"))
    image = next(c for c in records[0]["messages"][0]["content"] if c["type"] == "image")

    def sample(content: list[dict]) -> dict:
        return {"messages": [{"role": "user", "content": content},
                             {"role": "assistant", "content": [{"type": "text", "text": "3"}]}]}

    with_image = sample([image, {"type": "text", "text": "how many red shapes are there ?"}])
    long_text = sample([{"type": "text", "text": " ".join(["how many red shapes are there ?"] * 10)}])
    path = root / "two.jsonl"
    path.write_text(json.dumps(with_image) + "\n" + json.dumps(long_text) + "\n")
    return str(syn)


def command(workdir, syn, data, *extra):
    return [sys.executable, "-m", "bard_jax.train", "--recipe", os.path.join(REPO, "recipes", "demo.py"),
            "--workdir", str(workdir), "--recipe.data.train_jsonl", str(data), "--recipe.data.image_root", syn,
            "--recipe.data.processor", os.path.join(syn, "tokenizer"), "--recipe.data.global_batch_size", "2",
            "--recipe.data.micro_batch_size", "-1", "--recipe.data.length_buckets", "64,128",
            "--recipe.data.strict", "true",
            "--recipe.data.response_buckets", "16", "--recipe.steps", "3", "--recipe.log_every", "1",
            "--recipe.export_hf", "false", "--recipe.data.prefetch", "1", *extra]


def env(devices: int, cache) -> dict:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
            "JAX_COMPILATION_CACHE_DIR": str(cache)}


def test_hosts_with_different_local_data_build_the_same_shapes_and_train(tmp_path):
    syn = data_with_one_image_and_one_long_text(tmp_path)
    data = tmp_path / "two.jsonl"
    cache = tmp_path / "jax_cache"
    port = free_port()
    two = tmp_path / "two"
    logs = [open(tmp_path / f"p{i}.log", "w+") for i in (0, 1)]
    procs = [subprocess.Popen(command(two, syn, data, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                      "--process-id", str(i)),
                              stdout=logs[i], stderr=subprocess.STDOUT, cwd=REPO, env=env(1, cache))
             for i in (0, 1)]
    finish(procs, logs, timeout=300)
    one = tmp_path / "one"  # one process, the same two devices, the whole global batch
    r = subprocess.run(command(one, syn, data), capture_output=True, text=True, cwd=REPO, env=env(2, cache))
    assert r.returncode == 0, r.stderr[-4000:]
    assert len(losses(two)) == 3 and np.isfinite(losses(two)).all()
    # Gloo adds the two processes' gradients in another order than one process does.
    np.testing.assert_allclose(losses(two), losses(one), rtol=2e-5)
