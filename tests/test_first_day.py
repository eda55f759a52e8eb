"""The bad inputs a researcher's first day turned up (issue 34), replayed: each is now one error naming the flag, key,
file or value, raised before anything is written. (The cases with more setup live beside their subject:
test_train_workdir.py, test_eval_run.py, test_data_failures.py, test_sample_pure.py, test_demo.py,
test_data_convert.py, test_minibard.py.)"""

from __future__ import annotations

import os

import pytest
from test_train import FAST, REPO

import bard_jax as bj
from bard_jax import hf
from bard_jax.data import DataError, Processor, synthetic
from bard_jax.errors import InputError
from bard_jax.train import loop
from bard_jax.train.recipe import RecipeError
from bard_jax.train.setup import SetupError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic.generate(str(tmp_path_factory.mktemp("syn") / "data"), n=16, seed=3, n_eval=4)


def train_argv(workdir, data, *more):
    fast = [x if x != "4" or FAST[i - 1] != "--recipe.data.micro_batch_size" else "8" for i, x in enumerate(FAST)]
    return ["--recipe", os.path.join(REPO, "recipes", "demo.py"), "--workdir", str(workdir),
            "--recipe.data.synthetic_dir", data, *fast, "--recipe.steps", "2", *more]


def test_a_shard_size_of_zero_is_refused():
    with pytest.raises(InputError, match=r"size '0' must be positive"):
        hf.parse_size("0")
    with pytest.raises(InputError, match=r"size '0MB' must be positive"):
        hf.parse_size("0MB")
    assert hf.parse_size("2GiB") == 2 * 2**30


def test_a_mesh_that_is_not_a_mesh_is_named():
    with pytest.raises(InputError, match=r"mesh must be a jax.sharding.Mesh .* got str 'fsdp'"):
        bj.load_pretrained("/nonexistent", mesh="fsdp")


def test_process_images_with_paths_says_to_open_them(data):
    proc = Processor.from_pretrained(data)
    with pytest.raises(DataError, match=r"image 0 is a str, not a PIL image \(open it first"):
        proc.process_images([os.path.join(data, "images", "eval_000000.png")])


def test_contradictory_pixel_bounds_are_refused(data):
    with pytest.raises(DataError, match=r"min_pixels 5000 > max_pixels 4000"):
        Processor.from_pretrained(data, min_pixels=5000, max_pixels=4000)


def test_an_empty_prompt_is_refused(data):
    # Through the command line: importing the module bard_jax.generate in this process would shadow bj.generate
    # for the other tests of this worker.
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "bard_jax.generate", "--model", data, "--prompt", "  "],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1 and "error: --prompt is empty" in r.stderr and "Traceback" not in r.stderr


def test_a_fractional_number_for_an_integer_key_is_refused_not_truncated(tmp_path, data):
    with pytest.raises(RecipeError, match=r"override steps='1.9e0': cannot parse as int \(1.9 is not a whole number\)"):
        loop.main(train_argv(tmp_path / "run", data, "--recipe.steps=1.9e0"))
    assert not (tmp_path / "run").exists()


def test_a_missing_init_from_is_named_as_itself(tmp_path, data):
    with pytest.raises(SetupError, match=r"model.init_from: checkpoint directory not found: '/nonexistent/ckpt'"):
        loop.main(train_argv(tmp_path / "run", data, "--recipe.model.init_from", "/nonexistent/ckpt"))
    assert not (tmp_path / "run").exists()


def test_an_empty_train_jsonl_is_named(tmp_path, data):
    empty = tmp_path / "train.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(SetupError, match=rf"data.train_jsonl: {empty} holds no records"):
        loop.main(train_argv(tmp_path / "run", data, "--recipe.data.train_jsonl", str(empty),
                             "--recipe.data.processor", os.path.join(data, "tokenizer")))
    assert not (tmp_path / "run").exists()


def test_the_quiet_transformers_import_leaves_the_environment_as_it_was():
    """In a fresh process (so transformers really is imported by it): the advisory switch is on during the import
    and off again after it."""
    import subprocess
    import sys

    code = ("import os, sys\n"
            "from bard_jax.quiet_transformers import import_transformers\n"
            "assert 'transformers' not in sys.modules\n"
            "seen = []\n"
            "class Probe:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'transformers':\n"
            "            seen.append(os.environ.get('TRANSFORMERS_NO_ADVISORY_WARNINGS'))\n"
            "sys.meta_path.insert(0, Probe())\n"
            "assert import_transformers().__name__ == 'transformers'\n"
            "assert seen == ['1'], seen\n"
            "assert 'TRANSFORMERS_NO_ADVISORY_WARNINGS' not in os.environ\n")
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_NO_ADVISORY_WARNINGS"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]


POOL_PARENT = """
import concurrent.futures, multiprocessing, os, sys, time
from bard_jax.worker_exit import die_with_parent

def task():
    print(os.getpid(), flush=True)
    time.sleep(600)

if __name__ == "__main__":
    pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=die_with_parent)
    pool.submit(task)
    time.sleep(600)
"""


def test_workers_end_when_their_parent_is_killed(tmp_path):
    """A `kill -9` of a converter (or a training run with data workers) leaves no worker behind, writing."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(POOL_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    worker = int(parent.stdout.readline())  # the worker is running its task
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{worker}") and "Z" not in open(f"/proc/{worker}/stat").read().split()[2]:
        assert time.monotonic() < deadline, "the worker outlived its parent"
        time.sleep(0.05)


def test_the_progress_bar_names_the_compile_and_estimates_from_the_second_step(tmp_path, capsys):
    from bard_jax.train.metrics import MetricsWriter

    writer = MetricsWriter(str(tmp_path), total_steps=10, enabled=True)
    writer.advance()  # the first step: the compile
    said = "".join(capsys.readouterr())
    assert "first step: " in said and "most of it compiling the step" in said
    bar = writer._bar
    assert bar.n == 1 and bar.initial == 1  # the rate (and the estimate) count from here on
    writer.advance()
    assert bar.n == 2 and bar.initial == 1
    writer.close()


def test_the_eval_tasks_help_lists_every_task(capsys):
    from bard_jax.eval.__main__ import parse_args
    from bard_jax.eval.tasks import TASKS

    with pytest.raises(SystemExit):
        parse_args(["run", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert all(name in shown for name in TASKS) and "synthetic" in shown
