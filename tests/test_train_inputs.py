"""Mistakes in `python -m bard_jax.train` and what a run leaves behind: settings that cannot run are refused (naming
the key) before anything is read, written or compiled; errors of ours print one line without a traceback
(`--debug` shows it); metrics.jsonl holds each step once after a resume; unreadable checkpoints are named and the
newest readable one is used."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bard_jax import cli
from bard_jax.train import loop
from bard_jax.train.checkpoint import Checkpointer, CheckpointMismatchError, UnreadableCheckpointError
from bard_jax.train.metrics import MetricsWriter
from bard_jax.train.recipe import RecipeError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "recipes", "demo.py")


def train_argv(workdir, *overrides) -> list[str]:
    return ["--recipe", DEMO, "--workdir", str(workdir), *overrides]


# ------------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize("override, named", [
    ("--recipe.steps=0", "steps = 0: must be >= 1"),
    ("--recipe.steps=-5", "steps = -5: must be >= 1"),
    ("--recipe.log_every=0", "log_every = 0: must be >= 1"),
    ("--recipe.ckpt_every=0", "ckpt_every = 0: must be >= 1"),
    ("--recipe.keep_checkpoints=0", "keep_checkpoints = 0: must be >= 1"),
    ("--recipe.optim.language.peak_lr=-1e-4", "optim.language.peak_lr = -0.0001: a learning rate must be >= 0"),
    ("--recipe.optim.vision.peak_lr=nan", "optim.vision.peak_lr = nan: must be a finite number"),
    ("--recipe.optim.language.peak_lr=inf", "optim.language.peak_lr = inf: must be a finite number"),
    ("--recipe.data.micro_batch_size=0", "data.micro_batch_size = 0: must be >= 1"),
    ("--recipe.data.synthetic_n=0", "data.synthetic_n = 0: must be >= 1"),
    ("--recipe.objective.kind=diffusion", "objective.kind = 'diffusion': must be one of"),
    ("--recipe.optim.b2=1.0", "optim.b2 = 1.0: must be in [0, 1)"),
    ("--recipe.model.remat_policy=some", "model.remat_policy = 'some': must be one of"),
])
def test_settings_that_cannot_run_are_refused_before_anything_is_written(tmp_path, override, named):
    workdir = tmp_path / "run"
    with pytest.raises(RecipeError) as e:
        loop.main(train_argv(workdir, override))
    assert named in str(e.value)
    assert not workdir.exists() and not (tmp_path / "data").exists()


def test_every_bad_setting_is_named_at_once(tmp_path):
    with pytest.raises(RecipeError) as e:
        loop.main(train_argv(tmp_path / "run", "--recipe.steps=0", "--recipe.log_every=-1",
                             "--recipe.optim.language.peak_lr=nan"))
    lines = str(e.value).splitlines()
    assert len(lines) == 4 and lines[0] == "settings that cannot run:", lines


def test_a_workdir_that_cannot_be_created_is_refused_before_data_is_made(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(loop.TrainingError, match=f"workdir {blocker / 'run'} cannot be written: {blocker} is not a "
                                                 "directory"):
        loop.main(train_argv(blocker / "run"))
    assert not (tmp_path / "data").exists()


def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bard_jax.train", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "XLA_FLAGS": "", **(env or {})}, timeout=300)


def test_errors_print_one_line_without_a_traceback_and_debug_shows_it(tmp_path, capfd):
    r = run_cli(*train_argv(tmp_path / "run", "--recipe.optim.lr=1"))  # the real command, once
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("python -m bard_jax.train: error: unknown recipe key 'optim.lr'")

    assert cli.run(loop.main, prog="train", argv=["--recipe", str(tmp_path / "missing.py")]) == 1
    assert f"train: error: recipe file not found: {tmp_path / 'missing.py'}" in capfd.readouterr().err
    with pytest.raises(RecipeError, match="settings that cannot run"):  # --debug: the error goes through
        cli.run(loop.main, prog="train", argv=train_argv(tmp_path / "run", "--recipe.steps=0", "--debug"))
    os.environ["BARD_JAX_DEBUG"] = "1"
    try:
        with pytest.raises(RecipeError):
            cli.run(loop.main, prog="train", argv=train_argv(tmp_path / "run", "--recipe.steps=0"))
    finally:
        del os.environ["BARD_JAX_DEBUG"]


# ------------------------------------------------------------------------------------------------ metrics.jsonl
def test_resume_drops_the_rows_logged_after_the_restored_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 11)]
    path.write_text("".join(rows) + '{"step": 11, "lo')  # a run killed while writing step 11
    writer = MetricsWriter(str(tmp_path), total_steps=20, start_step=6, enabled=True)
    writer.write(7, {"loss": 0.5})
    writer.close()
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7]
    assert path.read_text().splitlines()[:6] == [r.rstrip("\n") for r in rows[:6]]  # kept rows byte for byte


# ------------------------------------------------------------------------------------------------ checkpoints
STATE = {"w": jnp.arange(64.0), "opt": {"m": jnp.ones((4, 4))}}
FINGERPRINT = {"text": [1, 2]}


def abstract():
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), STATE)


def saved(directory, steps=(1, 2, 3)) -> Checkpointer:
    ckpt = Checkpointer(str(directory), keep=5)
    for s in steps:
        ckpt.save(s, jax.tree_util.tree_map(lambda x, s=s: x * s, STATE), {"step": s, "fingerprint": FINGERPRINT})
    return ckpt


def truncate(path, size=7):
    with open(path, "r+b") as f:
        f.truncate(size)


def data_files(step_dir):
    return [os.path.join(d, f) for d, _, fs in os.walk(step_dir / "state") for f in fs if os.sep + "d" + os.sep in
            os.path.join(d, f)]


@pytest.mark.parametrize("damage, named", [
    ("meta", "meta/metadata is not valid JSON"),
    ("array metadata", "state/_METADATA is not valid JSON"),
    ("array data", "the array data under"),
    ("missing state", "state is missing"),
])
def test_unreadable_latest_checkpoint_is_named_and_the_previous_one_restores(tmp_path, capfd, damage, named):
    saved(tmp_path / "c").close()
    step3 = tmp_path / "c" / "3"
    if damage == "meta":
        truncate(step3 / "meta" / "metadata")
    elif damage == "array metadata":
        truncate(step3 / "state" / "_METADATA")
    elif damage == "array data":
        files = data_files(step3)
        assert files
        for p in files:
            truncate(p, 3)
    else:
        import shutil

        shutil.rmtree(step3 / "state")
    ckpt = Checkpointer(str(tmp_path / "c"), keep=5)
    state, meta = ckpt.restore_latest(abstract(), FINGERPRINT)
    assert meta["step"] == 2
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(64.0) * 2)
    err = capfd.readouterr().err
    assert "checkpoint step 3 cannot be read" in err and named in err, err
    assert sorted(os.listdir(tmp_path / "c")) == ["1", "2", "3.unreadable-0"]  # kept, out of the way
    ckpt.save(3, STATE, {"step": 3, "fingerprint": FINGERPRINT})  # the resumed run saves its step 3 again
    assert ckpt.restore_latest(abstract(), FINGERPRINT)[1]["step"] == 3
    ckpt.close()


def test_no_readable_checkpoint_is_an_error_naming_each_and_renames_nothing(tmp_path):
    saved(tmp_path / "c", steps=(1, 2)).close()
    for s in (1, 2):
        truncate(tmp_path / "c" / str(s) / "meta" / "metadata")
    ckpt = Checkpointer(str(tmp_path / "c"), keep=5)
    with pytest.raises(UnreadableCheckpointError) as e:
        ckpt.restore_latest(abstract(), FINGERPRINT)
    message = str(e.value)
    assert "step 2:" in message and "step 1:" in message and "2/meta/metadata is not valid JSON" in message
    assert sorted(os.listdir(tmp_path / "c")) == ["1", "2"]  # a re-run says the same instead of starting over


def test_a_checkpoint_of_another_recipe_is_refused_not_skipped(tmp_path):
    saved(tmp_path / "c").close()
    ckpt = Checkpointer(str(tmp_path / "c"), keep=5)
    with pytest.raises(CheckpointMismatchError, match="text: checkpoint has"):
        ckpt.restore_latest(abstract(), {"text": [1, 3]})
    assert sorted(os.listdir(tmp_path / "c")) == ["1", "2", "3"]


def test_keep_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="keep_checkpoints must be >= 1"):
        Checkpointer(str(tmp_path / "c"), keep=0)


# ------------------------------------------------------------------------------------------------ data that is unusable
@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    from bard_jax.data import synthetic

    return synthetic.generate(str(tmp_path_factory.mktemp("data") / "syn"), 40, 0, 4)


def unusable_data_argv(workdir, data, *overrides) -> list[str]:
    """The demo recipe on the synthetic set with a wrong image root: every sample's image is missing."""
    return train_argv(workdir, f"--recipe.data.train_jsonl={data}/train.jsonl", f"--recipe.data.processor={data}/"
                      "tokenizer", "--recipe.data.image_root=/nonexistent", "--recipe.data.length_buckets=256",
                      "--recipe.data.response_buckets=64", *overrides)


def test_no_usable_sample_stops_within_one_pass_with_the_reason(tmp_path, synthetic_data, caplog):
    from bard_jax.data import DataError

    with pytest.raises(DataError) as e:
        loop.main(unusable_data_argv(tmp_path / "run", synthetic_data))
    assert "no usable training sample: all 40 records fail (unreadable image: 40)" in str(e.value)
    assert "Hint: check data.image_root" in str(e.value)
    skips = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert 1 <= len(skips) <= 2, skips  # the first skip and maybe a summary, not a line per skipped sample


def test_a_stop_request_ends_a_run_waiting_for_usable_samples(tmp_path, synthetic_data, monkeypatch):
    """SIGTERM while the stream is still searching for a usable sample (each attempt slow, none usable): the run
    exits with the stopped status promptly instead of searching on (before, it ignored the signal for good)."""
    import threading
    import time

    from bard_jax.data.pipeline import TrainStream
    from bard_jax.train import signals

    real_attempt = TrainStream.attempt

    def slow_attempt(self, record_index, position):
        time.sleep(0.05)  # 40 records x 50 ms: a pass takes 2 s, and every one fails
        return real_attempt(self, record_index, position)

    class SignalledSoon(signals.StopFlag):
        def install(self):  # no real signal in the test process: the handler's effect, one second in
            def fire():
                self.signal_name = "SIGTERM"
                self.request()

            threading.Timer(1.0, fire).start()
            return self

    monkeypatch.setattr(TrainStream, "attempt", slow_attempt)
    monkeypatch.setattr(loop, "StopFlag", SignalledSoon)
    t0 = time.time()
    assert loop.main(unusable_data_argv(tmp_path / "run", synthetic_data, "--recipe.steps=3")) == 75
    assert time.time() - t0 < 60
    assert not (tmp_path / "run" / "export").exists()
