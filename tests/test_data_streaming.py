"""Records streamed from JSONL shards by byte offset: the index, its cache, changed shards, and the training stream
over them (same batches as the in-memory records, exact resume, skips named by file and line)."""

import json
import os
import pickle

import numpy as np
import pytest

from bard_jax.data import jsonl_records
from bard_jax.data.jsonl_records import JsonlRecords, MalformedRecord, ShardChanged, open_records, scan_lines
from bard_jax.data.pipeline import PipelineConfig, TrainStream, read_jsonl
from bard_jax.data.processor import DataError, Processor
from bard_jax.data.synthetic import generate


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return str(generate(str(tmp_path_factory.mktemp("syn")), n=60, seed=3, n_eval=4))


def rec(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


def write(path, lines: list[str], end: str = "\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + end)


def test_index_lists_each_non_blank_line_with_its_bytes_and_number(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"messages": []}\n\n   \r\n{"x": 1}\n\xc3\xa9t\xc3\xa9\n{"last": 1}')  # no final newline
    lines = scan_lines(str(p))
    # (start, end, line): line 1 is bytes 0..16, lines 2 and 3 (17..22) are blank, line 4 at 23..31, line 5 is
    # five bytes (two two-byte characters), the last line (11 bytes) ends at the end of the file.
    assert lines.tolist() == [[0, 16, 1], [23, 31, 4], [32, 37, 5], [38, 49, 6]]
    assert scan_lines(str(tmp_path / "a.jsonl")).dtype == np.int64


def test_index_across_chunk_boundaries_equals_a_line_by_line_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl_records, "_SCAN_CHUNK", 7)  # every line crosses a chunk boundary
    rng = np.random.default_rng(0)
    texts = [json.dumps(rec(int(i))) if rng.random() > 0.2 else "" for i in rng.integers(0, 10**6, 200)]
    p = tmp_path / "a.jsonl"
    write(p, texts)
    want, pos = [], 0
    for number, line in enumerate(p.read_bytes().split(b"\n"), 1):
        if line.strip():
            want.append([pos, pos + len(line), number])
        pos += len(line) + 1
    assert scan_lines(str(p)).tolist() == want


def test_records_of_a_file_a_directory_and_a_glob(tmp_path):
    write(tmp_path / "d" / "b.jsonl", [json.dumps(rec(2)), json.dumps(rec(3))])
    write(tmp_path / "d" / "a.jsonl", [json.dumps(rec(0)), "", json.dumps(rec(1))])
    write(tmp_path / "d" / "sub" / "c.jsonl", [json.dumps(rec(4))])
    (tmp_path / "d" / "notes.txt").write_text("not a shard\n")
    whole = open_records(str(tmp_path / "d"))
    assert [r["messages"][0]["content"] for r in whole] == ["q0", "q1", "q2", "q3", "q4"]  # sorted shard order
    assert whole[1]["_where"] == f"{tmp_path}/d/a.jsonl:3" and whole.where(4) == f"{tmp_path}/d/sub/c.jsonl:1"
    assert len(open_records(str(tmp_path / "d" / "*.jsonl"))) == 4
    assert len(open_records(str(tmp_path / "d" / "b.jsonl"))) == 2
    view = whole.select([4, 0])
    assert [r["messages"][1]["content"] for r in view] == ["a4", "a0"] and view.where(0).endswith("c.jsonl:1")
    for bad, why in ((tmp_path / "nope.jsonl", "training data not found"),
                     (tmp_path / "d" / "*.json", "matches no file"), (tmp_path / "empty", "holds no \\*.jsonl")):
        if bad.name == "empty":
            bad.mkdir()
        with pytest.raises(DataError, match=why):
            open_records(str(bad))


def test_a_malformed_line_is_named_by_file_and_line(tmp_path):
    write(tmp_path / "a.jsonl", [json.dumps(rec(0)), "{oops", json.dumps({"no": "messages"}), "[1]"])
    r = open_records(str(tmp_path / "a.jsonl"))
    assert len(r) == 4 and r[0]["messages"][0]["content"] == "q0"
    for i in (1, 2, 3):
        with pytest.raises(MalformedRecord, match="malformed json"):
            r[i]
    assert r.where(2) == f"{tmp_path}/a.jsonl:3"


def test_the_index_is_cached_beside_the_data_and_rebuilt_when_a_shard_changes(tmp_path, monkeypatch):
    p = tmp_path / "a.jsonl"
    write(p, [json.dumps(rec(i)) for i in range(5)])
    assert len(open_records(str(p))) == 5
    assert sorted(os.listdir(tmp_path / ".bard_index")) == ["a.jsonl.json", "a.jsonl.npy"]
    scans = []
    real_scan = jsonl_records.scan_lines
    monkeypatch.setattr(jsonl_records, "scan_lines", lambda path: scans.append(path) or real_scan(path))
    assert len(open_records(str(p))) == 5 and scans == []  # the cached index
    write(p, [json.dumps(rec(i)) for i in range(7)])
    assert len(open_records(str(p))) == 7 and len(scans) == 1  # size changed: indexed again
    # Same size and content length, other bytes, same modification time: the digest of the ends tells them apart.
    before = os.stat(p)
    p.write_text(p.read_text().replace("q6", "Q6"))
    os.utime(p, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert open_records(str(p))[6]["messages"][0]["content"] == "Q6" and len(scans) == 2


def test_a_read_only_data_directory_caches_the_index_in_the_user_cache(tmp_path, monkeypatch):
    data = tmp_path / "ro"
    write(data / "a.jsonl", [json.dumps(rec(i)) for i in range(3)])
    monkeypatch.setenv("BARD_JAX_CACHE", str(tmp_path / "cache"))
    # A read-only directory, as the test user may be root (who can write anywhere): writes beside the data fail.
    real_open = jsonl_records.atomic_file

    def open_or_fail(path, *args, **kwargs):
        if str(path).startswith(str(data)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(jsonl_records, "atomic_file", open_or_fail)
    assert len(open_records(str(data))) == 3
    assert len(os.listdir(tmp_path / "cache" / "jsonl_index")) == 2
    scans = []
    monkeypatch.setattr(jsonl_records, "scan_lines", lambda path: scans.append(path))
    assert len(open_records(str(data))) == 3 and scans == []  # found in the user cache


def test_a_shard_changed_while_read_is_an_error_not_a_skip(tmp_path):
    p = tmp_path / "a.jsonl"
    write(p, [json.dumps(rec(i)) for i in range(4)])
    r = open_records(str(p))
    assert r[1]["messages"][0]["content"] == "q1"
    write(p, [json.dumps(rec(i)) for i in range(1, 4)])  # the first line removed
    with pytest.raises(ShardChanged, match=r"a\.jsonl: the shard changed after its index was built"):
        r[1]


def test_records_pickle_to_a_few_paths_and_read_the_same(tmp_path):
    write(tmp_path / "a.jsonl", [json.dumps(rec(i)) for i in range(1000)])
    r = open_records(str(tmp_path / "a.jsonl")).select(np.arange(999, -1, -1))
    blob = pickle.dumps(r)
    assert len(blob) < 10_000  # the selection and paths, not the records (or their 24 kB index)
    back = pickle.loads(blob)
    assert isinstance(back, JsonlRecords) and back[0] == r[0] and back[0]["messages"][0]["content"] == "q999"


# ----------------------------------------------------------------------------------------- the training stream
def shards_of(synthetic, tmp_path, n_shards: int = 3):
    """The synthetic task's train.jsonl split into shards (blank lines between some records)."""
    lines = [ln for ln in open(os.path.join(synthetic, "train.jsonl")) if ln.strip()]
    out = tmp_path / "shards"
    out.mkdir()
    for k in range(n_shards):
        part = lines[k::n_shards]
        (out / f"part-{k:02d}.jsonl").write_text("\n".join(ln.rstrip("\n") for ln in part) + "\n\n")
    ordered = [ln for k in range(n_shards) for ln in lines[k::n_shards]]
    return out, [dict(json.loads(ln), _where="?") for ln in ordered]


def cfg(**kw) -> PipelineConfig:
    base = dict(global_batch_size=4, block_size=4, length_buckets=(64, 128, 256), pixel_rows=32, max_images=1, seed=3)
    return PipelineConfig(**{**base, **kw})


def test_streamed_shards_give_the_batches_of_the_same_records_in_memory(synthetic, tmp_path):
    shards, in_memory = shards_of(synthetic, tmp_path)
    proc = Processor.from_pretrained(synthetic)
    streamed = TrainStream(open_records(str(shards)), proc, cfg(), image_root=synthetic)
    listed = TrainStream(in_memory, proc, cfg(), image_root=synthetic)
    for _ in range(3):
        a, b = streamed.next_batch(), listed.next_batch()
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_streamed_resume_is_exact_and_refuses_other_data(synthetic, tmp_path):
    shards, _ = shards_of(synthetic, tmp_path)
    proc = Processor.from_pretrained(synthetic)
    full = TrainStream(open_records(str(shards)), proc, cfg(), image_root=synthetic)
    want = [full.next_batch() for _ in range(4)]
    first = TrainStream(open_records(str(shards)), proc, cfg(), image_root=synthetic)
    first.next_batch(), first.next_batch()
    state = json.loads(json.dumps(first.get_state()))  # as a checkpoint stores it
    resumed = TrainStream(open_records(str(shards)), proc, cfg(), image_root=synthetic)
    resumed.set_state(state)
    for w in want[2:]:
        got = resumed.next_batch()
        for k in w:
            np.testing.assert_array_equal(got[k], w[k], err_msg=k)
    with open(shards / "part-00.jsonl", "a") as f:
        f.write(json.dumps(in_memory_line(synthetic)) + "\n")
    other = TrainStream(open_records(str(shards)), proc, cfg(), image_root=synthetic)
    with pytest.raises(DataError, match=r"the training data changed since the checkpoint: it held \d+ records, now"):
        other.set_state(state)


def in_memory_line(synthetic) -> dict:
    return json.loads(open(os.path.join(synthetic, "train.jsonl")).readline())


def test_streamed_skips_name_the_shard_and_line_and_strict_mode_stops_there(synthetic, tmp_path, caplog):
    lines = [ln.rstrip("\n") for ln in open(os.path.join(synthetic, "train.jsonl")) if ln.strip()][:12]
    p = tmp_path / "bad.jsonl"
    write(p, lines[:3] + ["{oops"] + lines[3:])
    proc = Processor.from_pretrained(synthetic)
    s = TrainStream(open_records(str(p)), proc, cfg(global_batch_size=13, seed=0), image_root=synthetic)
    batch = s.next_batch()  # 13 positions cover every record of the first epoch, the malformed one included
    assert batch["input_ids"].shape[0] == 13 and s.get_state()["skipped"] == {"malformed json": 1}
    assert f"{p}:4: skipped (malformed json" in caplog.text
    strict = TrainStream(open_records(str(p)), proc, cfg(global_batch_size=13, seed=0, strict=True),
                         image_root=synthetic)
    with pytest.raises(DataError, match=rf"{p}:4: malformed json"):
        strict.next_batch()


def test_in_memory_records_read_the_same_as_the_index(synthetic):
    path = os.path.join(synthetic, "train.jsonl")
    listed, _ = read_jsonl(path)
    streamed = open_records(path)
    assert len(listed) == len(streamed)
    for i in (0, len(listed) // 2, len(listed) - 1):
        assert listed[i] == streamed[i]


def test_samples_longer_than_the_largest_bucket_are_skipped_and_counted_never_truncated(synthetic, tmp_path):
    base = in_memory_line(synthetic)
    long_answer = json.loads(json.dumps(base))
    long_answer["messages"][-1]["content"] = [{"type": "text", "text": " ".join(["red"] * 90)}]
    long_question = json.loads(json.dumps(base))
    long_question["messages"][0]["content"].append({"type": "text", "text": " ".join(["blue"] * 300)})
    write(tmp_path / "d.jsonl", [json.dumps(r) for r in (long_answer, long_question, base)])
    proc = Processor.from_pretrained(synthetic)
    s = TrainStream(open_records(str(tmp_path / "d.jsonl")), proc,
                    cfg(global_batch_size=3, length_buckets=(64, 128, 256), response_buckets=(16, 64)),
                    image_root=synthetic)
    batch = s.next_batch()
    skipped = s.get_state()["skipped"]
    assert skipped.get("response length N exceeds the largest bucket", 0) >= 1, skipped
    assert skipped.get("packed length N exceeds the largest bucket", 0) >= 1, skipped
    # Every slot holds the one short sample: nothing was cut to fit.
    assert batch["input_ids"].shape[1] <= 256 and len(set(map(bytes, batch["input_ids"]))) == 1


def test_a_directory_walk_leaves_out_hidden_folders_and_a_conversions_image_trees(tmp_path):
    write(tmp_path / "a" / "x.jsonl", [json.dumps(rec(0))])
    write(tmp_path / ".hidden" / "y.jsonl", [json.dumps(rec(1))])
    write(tmp_path / "images" / "z.jsonl", [json.dumps(rec(2))])
    assert len(open_records(str(tmp_path))) == 2  # a plain directory: images/ is walked
    (tmp_path / "convert.json").write_text("{}")
    assert [r["messages"][0]["content"] for r in open_records(str(tmp_path))] == ["q0"]


def test_a_missing_video_file_is_one_counted_reason_with_a_hint(synthetic, tmp_path, caplog):
    base = in_memory_line(synthetic)
    lines = []
    for i in range(3):  # three different missing files: one reason, not one per path
        r = json.loads(json.dumps(base))
        r["messages"][0]["content"] = [{"type": "video", "video": f"clips/missing_{i}.mp4"},
                                       {"type": "text", "text": "what color is the triangle ?"}]
        lines.append(json.dumps(r))
    write(tmp_path / "v.jsonl", lines + [json.dumps(base)])
    proc = Processor.from_pretrained(synthetic)
    s = TrainStream(open_records(str(tmp_path / "v.jsonl")), proc, cfg(global_batch_size=4), image_root=synthetic)
    s.next_batch()
    assert set(s.get_state()["skipped"]) == {"unreadable video"}
    everything_fails = TrainStream(open_records(str(tmp_path / "v.jsonl")).select([0, 1, 2]), proc,
                                   cfg(global_batch_size=2), image_root=synthetic)
    with pytest.raises(DataError, match=r"no usable training sample.*unreadable video: 3.*video paths in the JSONL "
                                        r"are read relative to it"):
        everything_fails.next_batch()
