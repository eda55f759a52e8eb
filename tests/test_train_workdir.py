"""A training run holds its workdir alone and replaces nothing it did not write: a second run on a held workdir is
refused naming the holder (a dead holder's lock is taken over), an export/ holding a user's files is refused before
any training, a finished run without checkpoints is not restarted over its results, and multi-process flags
without a coordinator are refused. The refusals are replayed in-process through the command's `main`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from test_train import FAST, REPO

from bard_jax.errors import InputError, TrainingError
from bard_jax.hf import CheckpointError
from bard_jax.train import loop
from bard_jax.train.workdir import LOCK_FILE, WorkdirLock, check_fresh_start


def argv(workdir, *more):
    # In-process runs see the suite's 8 fake CPU devices: one micro-batch of 8, one example per device.
    fast = [x if x != "4" or FAST[i - 1] != "--recipe.data.micro_batch_size" else "8" for i, x in enumerate(FAST)]
    return ["--recipe", os.path.join(REPO, "recipes", "demo.py"), "--workdir", str(workdir),
            "--recipe.data.synthetic_dir", str(workdir.parent / "data"), *fast, "--recipe.steps", "2", *more]


def snapshot(directory) -> dict[str, bytes]:
    """Every file under `directory` with its bytes (what a refused run must leave as it was)."""
    out = {}
    for base, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


HOLDER = """
import sys, time
from bard_jax.train.workdir import WorkdirLock
lock = WorkdirLock.take(sys.argv[1])  # kept: closing the file would drop the lock
print("held", flush=True)
time.sleep(600)
"""


def hold(workdir) -> subprocess.Popen:
    """Another process holding the workdir's lock (until killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    assert proc.stdout.readline().strip() == "held"  # waits until the lock is taken: no sleep, no race
    return proc


def test_a_held_workdir_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    w = tmp_path / "run"
    holder = hold(w)
    try:
        with pytest.raises(TrainingError, match=rf"workdir {w} is in use by another training run \(pid "
                                                rf"{holder.pid} on .*started"):
            loop.main(argv(w))
        assert sorted(os.listdir(w)) == [LOCK_FILE]  # nothing else written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = WorkdirLock.take(str(w))  # the kernel dropped the dead holder's lock
    record = json.loads(open(w / LOCK_FILE).read())
    assert record["pid"] == os.getpid()
    lock.release()
    WorkdirLock.take(str(w)).release()  # and a released lock is free again


def test_an_export_holding_a_users_files_is_refused_before_training(tmp_path):
    w = tmp_path / "run"
    (w / "export").mkdir(parents=True)
    (w / "export" / "notes.txt").write_text("my notes")
    before = snapshot(w)
    with pytest.raises(CheckpointError, match=r"export is not empty and not an earlier output of an export .*"
                                              r"notes\.txt.*does not replace it"):
        loop.main(argv(w))
    after = snapshot(w)
    after.pop(LOCK_FILE)
    assert after == before and not (w / "checkpoints").exists()


def test_a_finished_run_without_checkpoints_is_not_restarted_over_its_results(tmp_path):
    w = tmp_path / "run"
    w.mkdir()
    rows = "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3))
    (w / "metrics.jsonl").write_text(rows)
    with pytest.raises(TrainingError, match=r"holds an earlier run's results \(metrics up to step 3 "
                                            r"\(metrics\.jsonl\)\) but no checkpoint to resume from"):
        loop.main(argv(w))
    assert (w / "metrics.jsonl").read_text() == rows  # not cut to the new run's rows


def test_fresh_start_check_by_hand(tmp_path):
    check_fresh_start(str(tmp_path / "missing"))  # a new workdir
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\nnot json\n')
    check_fresh_start(str(tmp_path))  # nothing past step 0, unreadable rows skipped
    (tmp_path / "export").mkdir()
    check_fresh_start(str(tmp_path))  # an empty export dir holds nothing
    (tmp_path / "export" / "bard_jax_config.json").write_text("{}")
    with pytest.raises(TrainingError, match=r"an export \("):
        check_fresh_start(str(tmp_path))


@pytest.mark.parametrize("flags,message", [
    (("--num-processes", "2"), "--num-processes need --coordinator HOST:PORT"),
    (("--process-id", "1", "--num-processes", "2"), "--num-processes and --process-id need --coordinator"),
    (("--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"),
     "--coordinator 'localhost' has no port: pass HOST:PORT"),
])
def test_multi_process_flags_without_a_usable_coordinator_are_refused(tmp_path, flags, message, monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    with pytest.raises(InputError, match=message):
        loop.main(argv(tmp_path / "run", *flags))
    assert not (tmp_path / "run").exists()


def test_two_launches_at_once_one_trains_the_other_is_refused(tmp_path):
    """The double launch of the issue, through the command line: the second is refused naming the first, whose
    metrics are one run's rows."""
    w = tmp_path / "run"
    first_cmd = [sys.executable, "-m", "bard_jax.train", *argv(w, "--recipe.steps", "100000")]
    env = {**os.environ, "XLA_FLAGS": ""}
    first = subprocess.Popen(first_cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Launch the second once the first holds the lock (its lock file names it): the outcome does not depend on
        # which process starts faster.
        deadline = time.monotonic() + 300
        while not (w / LOCK_FILE).is_file() or f'"pid": {first.pid},' not in (w / LOCK_FILE).read_text():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "bard_jax.train", *argv(w)], cwd=REPO, env=env,
                                capture_output=True, text=True)
        assert second.returncode != 0
        assert f"is in use by another training run (pid {first.pid} on" in second.stderr, second.stderr[-3000:]
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate()
    if (w / "metrics.jsonl").exists():
        steps = [json.loads(line)["step"] for line in open(w / "metrics.jsonl")]
        assert steps == list(range(1, len(steps) + 1))  # one run's rows, none twice


def test_steps_lowered_below_the_checkpoint_are_refused_not_exported_as_finished(tmp_path, capsys):
    w = tmp_path / "run"
    assert loop.main(argv(w)) == 0  # 2 steps, a checkpoint at step 2, exported
    # The run's last line says where the model went.
    assert f"[bard_jax.train] demo: finished at step 2; the model is in {w / 'export'}" in capsys.readouterr().out
    exported = snapshot(w / "export")
    with pytest.raises(TrainingError, match=r"is at step 2, past steps=1: .* set --recipe.steps=2"):
        loop.main(argv(w, "--recipe.steps", "1"))
    assert snapshot(w / "export") == exported


@pytest.mark.parametrize("key,value,token", [("mask_token_id", "5", "<|mask|>"), ("pad_token_id", "7", "<|im_end|>")])
def test_token_id_overrides_the_tokenizer_would_override_are_refused(tmp_path, key, value, token):
    from bard_jax.train.setup import SetupError

    with pytest.raises(SetupError, match=rf"objective.{key}={value}, but the tokenizer in .* has "
                                         rf"{re.escape(token)} = \d+, which training uses"):
        loop.main(argv(tmp_path / "run", f"--recipe.objective.{key}", value))
    assert not (tmp_path / "run").exists()


def test_an_unreachable_coordinator_is_named_after_the_timeout(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "bard_jax.train", *argv(tmp_path / "run"), "--coordinator", f"127.0.0.1:{port}",
           "--num-processes", "2", "--process-id", "1", "--coordinator-timeout", "3"]
    r = subprocess.run(cmd, cwd=REPO, env={**os.environ, "XLA_FLAGS": ""}, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 1, r.stderr[-3000:]
    assert f"joining the run at 127.0.0.1:{port} (waiting up to 3 s" in r.stderr
    assert f"process 1 of 2 could not reach the coordinator at 127.0.0.1:{port} within 3 s" in r.stderr, \
        r.stderr[-3000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()
