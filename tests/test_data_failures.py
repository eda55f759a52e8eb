"""Data failures: a dataset with nothing usable stops with a clear error instead of searching forever, skips do not
flood the log, a stop request ends a wait for data, and the synthetic task is never used half-written."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import types

import pytest

from bard_jax.data import DataError, Processor, synthetic
from bard_jax.data import pipeline as pipeline_module
from bard_jax.data.pipeline import PipelineConfig, StopRequested, TrainStream, read_jsonl
from bard_jax.data.prefetch import Prefetcher
from bard_jax.errors import BardError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE_LOG = "bard_jax.data.pipeline"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic.generate(str(tmp_path_factory.mktemp("syn") / "data"), n=40, seed=5, n_eval=4)


def records_of(data, broken=lambda i: False):
    """The training records, with the image of every record i where broken(i) pointing at a missing file."""
    records, _ = read_jsonl(os.path.join(data, "train.jsonl"))
    for i, rec in enumerate(records):
        if broken(i):
            rec["messages"][0]["content"][0]["image"] = f"images/missing_{i}.png"
    return records


def make_stream(data, records, image_root=None, workers=0, stop_event=None):
    cfg = PipelineConfig(global_batch_size=8, block_size=4, length_buckets=(128, 256), pixel_rows=32,
                         max_images=1, seed=1, workers=workers)
    return TrainStream(records, Processor.from_pretrained(data), cfg, image_root=data if image_root is None else
                       image_root, processor_dir=os.path.join(data, "tokenizer"), stop_event=stop_event)


def pipeline_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == PIPELINE_LOG]


@pytest.mark.parametrize("mode", ["bare", "workers", "prefetch"])
def test_no_usable_sample_is_a_clear_error_within_one_pass(data, tmp_path, caplog, mode):
    records = records_of(data)
    stream = make_stream(data, records, image_root=str(tmp_path / "wrong_root"), workers=int(mode == "workers"))
    source = Prefetcher(stream, depth=2) if mode == "prefetch" else stream
    caplog.set_level(logging.WARNING, logger=PIPELINE_LOG)
    try:
        with pytest.raises(DataError) as e:
            source.next_batch()
    finally:
        source.close()
    skipped = sum(stream.skipped.values())
    assert 0 < skipped <= len(records)  # stream positions examined before giving up: at most one pass
    message = str(e.value)
    assert f"all {len(records)} records fail (unreadable image: {len(records)})" in message
    assert "wrong_root" in message and "train.jsonl:" in message and "cannot be read" in message
    assert "check data.image_root" in message
    assert len(pipeline_lines(caplog)) == 1  # the first skip with its example; the rest are counted


def test_a_dataset_with_one_usable_record_keeps_going(data, monkeypatch):
    """Runs of skipped positions as long as the dataset happen by chance (each epoch has its own order): the
    whole-pass check then tries the records directly and finds the usable one."""
    checks = []
    check = TrainStream._check_anything_usable
    monkeypatch.setattr(TrainStream, "_check_anything_usable", lambda self: checks.append(1) or check(self))
    records = records_of(data, broken=lambda i: i != 7)
    stream = make_stream(data, records)
    for _ in range(3):
        batch = stream.next_batch()
        assert batch["input_ids"].shape[0] == 8
    assert checks  # the check ran (and found record 7), so a bare count of skipped positions would have stopped


def test_skips_are_logged_once_per_reason_then_summarised(data, caplog):
    records = records_of(data, broken=lambda i: i % 2 == 0)
    records[1]["messages"] = records[1]["messages"][:1]  # a second reason: no assistant turn
    stream = make_stream(data, records)
    caplog.set_level(logging.WARNING, logger=PIPELINE_LOG)
    for _ in range(6):
        stream.next_batch()
    skipped = sum(stream.skipped.values())
    lines = pipeline_lines(caplog)
    assert skipped >= 20 and len(lines) == 2, lines  # one line per reason, with where and why
    assert any("train.jsonl:" in x and "cannot be read" in x for x in lines)
    assert any("no assistant turn" in x for x in lines)
    stream._last_summary -= pipeline_module.SKIP_SUMMARY_SECONDS + 1  # as if the interval had passed
    while sum(stream.skipped.values()) == skipped:
        stream.next_batch()
    summary = pipeline_lines(caplog)[2:]
    assert len(summary) == 1 and "unreadable image: " in summary[0], summary


def test_malformed_lines_are_logged_once_and_summarised(tmp_path, caplog):
    path = tmp_path / "bad.jsonl"
    path.write_text("{oops\n" * 50 + json.dumps({"messages": []}) + "\n")
    caplog.set_level(logging.WARNING, logger=PIPELINE_LOG)
    records, skipped = read_jsonl(str(path))
    assert len(records) == 1 and skipped["malformed json"] == 50
    lines = pipeline_lines(caplog)
    assert len(lines) == 2 and "bad.jsonl:1: skipped malformed sample" in lines[0] and "50 malformed" in lines[1]


def endless_hunt(data, stop_event=None):
    """A stream whose every sample is skipped and whose dataset is so large that the whole-pass check is minutes
    away: next_batch() searches until stopped."""
    return make_stream(data, records_of(data, broken=lambda i: True) * 20000, stop_event=stop_event)


def set_later(event, seconds=0.3):
    threading.Timer(seconds, event.set).start()


def test_stop_event_ends_a_search_for_usable_samples(data):
    event = threading.Event()
    stream = endless_hunt(data, event)
    state = stream.get_state()
    set_later(event)
    t0 = time.monotonic()
    with pytest.raises(StopRequested):
        stream.next_batch()
    assert time.monotonic() - t0 < 5
    assert not isinstance(StopRequested(), BardError)
    assert stream.get_state() == state  # the abandoned batch is redone after a resume


def test_stop_event_ends_a_wait_for_the_prefetch_thread_and_close_returns(data):
    event = threading.Event()
    ahead = Prefetcher(endless_hunt(data), stop_event=event)  # the stream gets the event too
    assert ahead.stream.stop_event is event
    set_later(event)
    t0 = time.monotonic()
    with pytest.raises(StopRequested):
        ahead.next_batch()
    ahead.close()
    assert time.monotonic() - t0 < 5
    assert ahead.get_state() == {"batch_number": 0, "skipped": {}, "records": 800000}


def test_close_interrupts_a_prefetch_thread_that_is_searching(data):
    ahead = Prefetcher(endless_hunt(data))  # no stop event at all
    outcome = []

    def consume():
        try:
            ahead.next_batch()
        except StopRequested as e:
            outcome.append(e)

    consumer = threading.Thread(target=consume)
    consumer.start()
    deadline = time.monotonic() + 30
    while not (ahead._pending and ahead._pending[0].running()) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # searching
    t0 = time.monotonic()
    ahead.close()
    consumer.join(5)
    assert time.monotonic() - t0 < 5 and not consumer.is_alive() and outcome


# ---------------------------------------------------------------------------------------------- synthetic output
def leftovers(parent):
    return [x for x in os.listdir(parent) if ".partial-" in x or ".old-" in x]


def test_a_killed_generation_is_never_used(tmp_path, monkeypatch):
    out = str(tmp_path / "data")
    real = synthetic.write_split

    def dies_in_eval(out_dir, name, n, rng, start, task=None):
        if name == "eval":
            raise KeyboardInterrupt  # killed after the training split was written
        real(out_dir, name, n, rng, start, task)

    monkeypatch.setattr(synthetic, "write_split", dies_in_eval)
    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure(out, 12, seed=1, n_eval=3)
    assert not os.path.exists(out) and not leftovers(tmp_path)
    monkeypatch.setattr(synthetic, "write_split", real)
    synthetic.ensure(out, 12, seed=1, n_eval=3)
    assert synthetic.why_not_reusable(out, 12, 1, 3) is None
    assert len(open(os.path.join(out, "eval.jsonl")).readlines()) == 3


def test_partial_output_and_leftover_folders_of_a_killed_run_are_replaced(tmp_path, capfd):
    """What SIGKILL leaves: an older version's partial output in place, this version's temporary folders beside
    it. `_synthetic_dir` (what training calls) regenerates the one and removes the dead writer's others."""
    from bard_jax.atomic_dir import _host
    from bard_jax.train.setup import _synthetic_dir

    out = tmp_path / "data"
    (out / "images").mkdir(parents=True)
    (out / "tokenizer").mkdir()
    (out / "images" / "train_000000.png").write_bytes(b"")
    (out / "train.jsonl").write_text('{"messages": []}\n')  # 1 of 10 samples
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f".data.partial-{int(gone.stdout)}@{_host()}-0123abcd"
    dead_old = tmp_path / f".data.old-{int(gone.stdout)}@{_host()}-89abcdef"
    for d in (dead, dead_old):
        (d / "images").mkdir(parents=True)
    live = tmp_path / f".data.partial-{os.getppid()}@{_host()}-00000000"  # pytest's parent: a running writer
    elsewhere = tmp_path / ".data.partial-12@another-host-0000ffff"  # its pid means nothing here: left alone
    live.mkdir()
    elsewhere.mkdir()
    cfg = types.SimpleNamespace(workdir=str(tmp_path / "run"), data=types.SimpleNamespace(
        synthetic_dir=str(out), synthetic_n=10, synthetic_eval_n=2, synthetic_seed=0, synthetic_task="digits"))
    assert _synthetic_dir(cfg) == str(out)
    err = capfd.readouterr().err
    assert f"synthetic data at {out} has no settings.json" in err and "regenerating" in err, err
    assert synthetic.why_not_reusable(str(out), 10, 0, 2) is None
    assert sorted(leftovers(tmp_path)) == sorted([live.name, elsewhere.name])


def test_other_settings_regenerate_and_the_same_reuse(tmp_path, capsys):
    out = str(tmp_path / "data")
    synthetic.ensure(out, 6, seed=2, n_eval=1)
    assert capsys.readouterr().err == ""
    marker = os.path.join(out, "marker")
    open(marker, "w").close()
    synthetic.ensure(out, 6, seed=2, n_eval=1)
    assert os.path.exists(marker) and capsys.readouterr().err == ""  # reused as it is
    synthetic.ensure(out, 7, seed=2, n_eval=1)
    err = capsys.readouterr().err
    assert f"synthetic data at {out} was made with n=6" in err and "n=7" in err and "regenerating" in err
    assert not os.path.exists(marker) and len(open(os.path.join(out, "train.jsonl")).readlines()) == 7
    assert json.load(open(os.path.join(out, "settings.json")))["n"] == 7
    os.remove(os.path.join(out, "images", "train_000003.png"))
    synthetic.ensure(out, 7, seed=2, n_eval=1)
    assert "is incomplete (7 images, not 8)" in capsys.readouterr().err
    assert synthetic.why_not_reusable(out, 7, 2, 1) is None and not leftovers(tmp_path)


@pytest.mark.parametrize("content", ["notes", "look-alike"])
def test_a_directory_that_is_not_synthetic_output_is_never_deleted(tmp_path, content):
    out = tmp_path / "mine"
    if content == "notes":
        (out / "thesis").mkdir(parents=True)
        (out / "thesis" / "notes.txt").write_text("precious")
    else:  # the generator's folder names, but files it does not write
        (out / "images").mkdir(parents=True)
        (out / "tokenizer").mkdir()
        (out / "images" / "cat.jpg").write_text("precious")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    for make in (synthetic.ensure, synthetic.generate):
        with pytest.raises(DataError, match=f"{out} is not synthetic data.*refusing to replace it"):
            make(str(out), 5, 0, 1)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_bad_counts_are_errors(tmp_path):
    with pytest.raises(DataError, match="n-eval"):
        synthetic.main(["--out", str(tmp_path / "x"), "--n", "3", "--n-eval", "-1"])
    with pytest.raises(DataError, match="seed"):
        synthetic.ensure(str(tmp_path / "x"), 3, seed=-1, n_eval=0)
    assert not os.path.exists(tmp_path / "x")
    r = subprocess.run([sys.executable, "-m", "bard_jax.data.synthetic", "--out", str(tmp_path / "x"), "--n", "0"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines()[0].startswith("python -m bard_jax.data.synthetic: error: synthetic data needs at "
                                               "least 1 training sample (--n")


def test_an_over_long_line_is_skipped_from_its_byte_length_before_it_is_read(data, tmp_path, monkeypatch):
    """One line far longer than any sample of the largest bucket can be: skipped by the size the index gives, never
    read, parsed or tokenised (not once per pass either); the other records train as usual."""
    from bard_jax.data.jsonl_records import JsonlRecords, open_records

    lines = open(os.path.join(data, "train.jsonl")).read().splitlines()
    huge = json.loads(lines[3])
    huge["messages"][-1]["content"][0]["text"] = "word " * 400_000  # 2 MB of text
    lines[3] = json.dumps(huge)
    shard = tmp_path / "train.jsonl"
    shard.write_text("\n".join(lines) + "\n")
    records = open_records(str(shard))
    read = []
    raw = JsonlRecords.raw
    monkeypatch.setattr(JsonlRecords, "raw", lambda self, i: read.append(i) or raw(self, i))
    stream = make_stream(data, records)
    assert stream.max_line_bytes < records.line_bytes(3) and records.line_bytes(2) < stream.max_line_bytes
    for _ in range(2 * len(lines) // 8 + 1):  # more than two passes over the records
        assert stream.next_batch()["input_ids"].shape[0] == 8
    assert 3 not in read and len(set(read)) == len(lines) - 1
    reasons = [r for r in stream.skipped if "bytes is longer than any sample" in r]
    assert len(reasons) == 1 and stream.skipped[reasons[0]] >= 2, stream.skipped


def test_a_resume_over_data_replaced_by_lines_of_the_same_total_size_is_refused(data, tmp_path):
    from bard_jax.data.jsonl_records import open_records

    lines = open(os.path.join(data, "train.jsonl")).read().splitlines()
    shard = tmp_path / "train.jsonl"
    shard.write_text("\n".join(lines) + "\n")
    stream = make_stream(data, open_records(str(shard)))
    stream.next_batch()
    state = stream.get_state()
    assert len(state["data_digest"]) == 16
    # The same data again (re-indexed): it resumes.
    make_stream(data, open_records(str(shard))).set_state(state)
    # Two records swapped: same size, same number of records, other samples at the same positions.
    swapped = [lines[1], lines[0], *lines[2:]]
    shard.write_text("\n".join(swapped) + "\n")
    assert shard.stat().st_size == sum(len(x) + 1 for x in lines)
    with pytest.raises(DataError, match=r"the same \d+ records in number, but other contents"):
        make_stream(data, open_records(str(shard))).set_state(state)
