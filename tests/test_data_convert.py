"""bard_jax.data.convert: each source's rows to exact records, images stored as decodable RGB, drop counts, resume,
workers, --limit, bad input, the command line, and the output read by the training pipeline."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bard_jax.data.convert import ConvertError, convert
from bard_jax.data.convert.output import ShardWriter

SYSTEM = {"role": "system", "content": "You are a helpful assistant"}
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
FINEVISION = pa.schema([("images", pa.list_(IMAGE)),
                        ("texts", pa.list_(pa.struct([("user", pa.string()), ("assistant", pa.string())]))),
                        ("source", pa.string()), ("relevance_ratings", pa.list_(pa.int64()))])


def encoded(size, color, mode="RGB", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    im = Image.new("RGB", size, color)
    if mode == "RGBA":
        im = im.convert("RGBA")
        im.putalpha(128)
    elif mode == "P":
        im = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    im.save(buf, format=fmt)
    return buf.getvalue()


def img(data=None, path=None):
    return {"bytes": data, "path": path}


def user(*parts):
    return {"role": "user", "content": list(parts)}


def answer(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def text(t):
    return {"type": "text", "text": t}


def image(path):
    return {"type": "image", "image": path}


def fv_row(images, rounds):
    return {"images": images, "texts": [{"user": u, "assistant": a} for u, a in rounds], "source": "x",
            "relevance_ratings": [5]}


def write_parquet(path, rows, schema, row_group_size=2):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=row_group_size)


def tree(root):
    """relative path -> bytes of every file under root (the pipeline's index cache aside)."""
    found = {}
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".bard_index"]
        for f in files:
            path = os.path.join(directory, f)
            found[os.path.relpath(path, root)] = open(path, "rb").read()
    return found


def records(out, name):
    with open(os.path.join(out, name + ".jsonl")) as f:
        return [json.loads(line) for line in f]


def stored(out, rel):
    with Image.open(os.path.join(out, rel)) as im:
        return im.mode, im.size, im.format, np.asarray(im).reshape(-1, 3).mean(0)


# ------------------------------------------------------------------------------------------------ finevision
def make_finevision(src):
    a0, a1, b0 = (os.path.join(src, *p) for p in (("alpha", "train-00000-of-00002.parquet"),
                                                   ("alpha", "train-00001-of-00002.parquet"),
                                                   ("beta", "train-00000-of-00001.parquet")))
    write_parquet(a0, [
        fv_row([img(encoded((40, 30), (255, 0, 0)))], [("<image>\nWhat color?", "Red.")]),
        fv_row([img(encoded((20, 10), (0, 0, 255), fmt="JPEG")), img(encoded((16, 16), (0, 255, 0), "RGBA"))],
               [("Compare\n<image>", "Same."), ("Why?", "Because.")]),
        fv_row([], [("Hi <image>there", "Hello")]),
        fv_row([img(encoded((8, 8), (1, 2, 3)))], []),
        fv_row([img(b"not an image at all")], [("What?", "No.")]),
    ], FINEVISION)
    os.makedirs(os.path.join(src, "alpha", "pics"))
    with open(os.path.join(src, "alpha", "pics", "p.png"), "wb") as f:
        f.write(encoded((12, 24), (200, 200, 0), "P"))
    write_parquet(a1, [
        fv_row([img(None, "pics/p.png")], [("Palette?", "Yes.")]),
        fv_row([img(None, "pics/missing.png")], [("Where?", "Gone.")]),
        fv_row([], [("a", ""), ("b", "c")]),
        fv_row([], [("a", "   ")]),
        fv_row([img(encoded((10, 10), (9, 9, 9)))], [("<image>", "Caption.")]),
    ], FINEVISION)
    os.makedirs(os.path.join(src, "shared"))
    with open(os.path.join(src, "shared", "s.png"), "wb") as f:
        f.write(encoded((6, 4), (0, 0, 0)))
    write_parquet(b0, [fv_row([img(None, "shared/s.png")], [("From src?", "Yes.")]),
                       fv_row([], [("Only text", "Fine")])], FINEVISION, row_group_size=1)
    return src


@pytest.fixture(scope="module")
def fv_src(tmp_path_factory):
    return make_finevision(str(tmp_path_factory.mktemp("finevision")))


@pytest.fixture(scope="module")
def fv_out(fv_src, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fv_out") / "out")
    convert("finevision", fv_src, out, progress=False)
    return out


A0, A1, B0 = "alpha/train-00000-of-00002", "alpha/train-00001-of-00002", "beta/train-00000-of-00001"


def test_finevision_records_images_and_stats(fv_out):
    assert records(fv_out, A0) == [
        {"messages": [SYSTEM, user(image(f"images/{A0}/00000000_0.jpg"), text("What color?")), answer("Red.")],
         "id": f"{A0}/0", "source": "finevision/alpha"},
        {"messages": [SYSTEM, user(image(f"images/{A0}/00000001_0.jpg"), image(f"images/{A0}/00000001_1.jpg"),
                                   text("Compare")), answer("Same."), user(text("Why?")), answer("Because.")],
         "id": f"{A0}/1", "source": "finevision/alpha"},
        {"messages": [SYSTEM, user(text("Hi there")), answer("Hello")], "id": f"{A0}/2",
         "source": "finevision/alpha"},
    ]
    assert records(fv_out, A1) == [
        {"messages": [SYSTEM, user(image(f"images/{A1}/00000000_0.jpg"), text("Palette?")), answer("Yes.")],
         "id": f"{A1}/0", "source": "finevision/alpha"},
        {"messages": [SYSTEM, user(image(f"images/{A1}/00000004_0.jpg")), answer("Caption.")],
         "id": f"{A1}/4", "source": "finevision/alpha"},
    ]
    assert records(fv_out, B0) == [
        {"messages": [SYSTEM, user(image(f"images/{B0}/00000000_0.jpg"), text("From src?")), answer("Yes.")],
         "id": f"{B0}/0", "source": "finevision/beta"},
        {"messages": [SYSTEM, user(text("Only text")), answer("Fine")], "id": f"{B0}/1", "source": "finevision/beta"},
    ]
    expected = {f"{A0}/00000000_0.jpg": ((40, 30), (255, 0, 0)), f"{A0}/00000001_0.jpg": ((20, 10), (0, 0, 255)),
                f"{A0}/00000001_1.jpg": ((16, 16), (0, 255, 0)), f"{A1}/00000000_0.jpg": ((12, 24), (200, 200, 0)),
                f"{A1}/00000004_0.jpg": ((10, 10), (9, 9, 9)), f"{B0}/00000000_0.jpg": ((6, 4), (0, 0, 0))}
    written = sorted(p[len("images/"):] for p in tree(fv_out) if p.startswith("images/"))
    assert written == sorted(expected)
    for rel, (size, color) in expected.items():
        mode, got_size, fmt, mean = stored(fv_out, "images/" + rel)
        assert (mode, got_size, fmt) == ("RGB", size, "JPEG"), rel
        assert np.abs(mean - color).max() < 8, (rel, mean)
    stats = json.load(open(os.path.join(fv_out, "stats.json")))
    alpha = {"shards": 2, "rows": 10, "kept": 5, "images": 5, "videos": 0,
             "dropped": {"no text turns": 1, "undecodable image": 1, "image not found": 1, "empty turn": 1,
                         "no assistant answer": 1}}
    beta = {"shards": 1, "rows": 2, "kept": 2, "images": 1, "videos": 0, "dropped": {}}
    assert stats["by_source"] == {"finevision/alpha": alpha, "finevision/beta": beta}
    assert stats["totals"] == {**alpha, "shards": 3, "rows": 12, "kept": 7, "images": 6}
    assert stats["failed_shards"] == []
    manifest = json.load(open(os.path.join(fv_out, "convert.json")))
    assert manifest["source"] == "finevision"
    assert manifest["options"] == {"image_format": "jpeg", "system": "You are a helpful assistant", "limit": None}


def test_png_format_and_no_system_message(fv_src, tmp_path):
    out = str(tmp_path / "out")
    convert("finevision", fv_src, out, subsets=["beta"], system="", image_format="png", progress=False)
    assert records(out, B0)[0]["messages"] == [user(image(f"images/{B0}/00000000_0.png"), text("From src?")),
                                               answer("Yes.")]
    assert stored(out, f"images/{B0}/00000000_0.png")[:3] == ("RGB", (6, 4), "PNG")
    assert not os.path.exists(os.path.join(out, "alpha"))


def test_rerun_over_finished_output_changes_nothing(fv_src, fv_out):
    def mtimes():
        return {os.path.join(d, n): os.stat(os.path.join(d, n)).st_mtime_ns
                for d, dirs, files in os.walk(fv_out) for n in dirs + files}
    before = mtimes()
    convert("finevision", fv_src, fv_out, progress=False)
    assert mtimes() == before


class Interrupted(Exception):
    pass


def test_an_interrupted_conversion_resumes_to_the_same_bytes(fv_src, fv_out, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    original, calls = ShardWriter.add, []

    def add_then_die(self, *args):
        calls.append(1)
        if len(calls) == 4:  # the second shard, part-way: its first row is written, the shard is not committed
            raise Interrupted
        original(self, *args)

    monkeypatch.setattr(ShardWriter, "add", add_then_die)
    with pytest.raises(Interrupted):
        convert("finevision", fv_src, out, progress=False)
    monkeypatch.setattr(ShardWriter, "add", original)
    assert os.path.exists(os.path.join(out, A1 + ".jsonl.partial"))
    assert os.path.exists(os.path.join(out, A0 + ".jsonl")) and not os.path.exists(os.path.join(out, B0 + ".jsonl"))
    convert("finevision", fv_src, out, progress=False)
    assert tree(out) == tree(fv_out)


def test_a_leftover_partial_shard_is_redone_without_duplicates(fv_src, fv_out, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(fv_out, out)
    os.unlink(os.path.join(out, A1 + ".jsonl"))  # as if killed before the commit: the counts are there already
    with open(os.path.join(out, A1 + ".jsonl.partial"), "w") as f:
        f.write('{"messages": [], "id": "half"}\n{"mess')
    with open(os.path.join(out, "images", A1, "00000003_0.jpg.tmp"), "wb") as f:
        f.write(b"half an image")
    convert("finevision", fv_src, out, progress=False)
    assert tree(out) == tree(fv_out)


def test_two_workers_give_the_same_output(fv_src, fv_out, tmp_path):
    out = str(tmp_path / "out")
    convert("finevision", fv_src, out, workers=2, progress=False)
    assert tree(out) == tree(fv_out)


def test_limit_takes_the_first_rows_in_shard_order(fv_src, tmp_path):
    out = str(tmp_path / "out")
    stats = convert("finevision", fv_src, out, limit=7, progress=False)
    assert [r["id"] for r in records(out, A1)] == [f"{A1}/0"]  # rows 0 and 1 taken; row 1's image is missing
    assert not os.path.exists(os.path.join(out, B0 + ".jsonl"))
    assert stats["totals"]["rows"] == 7 and stats["totals"]["kept"] == 4
    assert stats["totals"]["dropped"] == {"image not found": 1, "no text turns": 1, "undecodable image": 1}
    manifest = json.load(open(os.path.join(out, "convert.json")))
    assert manifest["options"]["limit"] == {"rows": 7, "subsets": ["alpha", "beta"]}
    before = tree(out)
    with pytest.raises(ConvertError, match=r"'rows': 7.*'rows': 8"):
        convert("finevision", fv_src, out, limit=8, progress=False)
    with pytest.raises(ConvertError, match="'finevision'.*'llava_ov15'"):
        convert("llava_ov15", fv_src, out, progress=False)
    assert tree(out) == before


def test_bad_input_is_reported_before_anything_is_written(fv_src, tmp_path):
    out = str(tmp_path / "out")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(ConvertError, match=rf"{empty}: no input files.*SRC/<subset>/\*\.parquet"):
        convert("finevision", str(empty), out, progress=False)
    with pytest.raises(ConvertError, match=r"no subset gamma.*it has: alpha, beta"):
        convert("finevision", fv_src, out, subsets=["alpha", "gamma"], progress=False)
    with pytest.raises(ConvertError, match="has no subsets"):
        convert("mmfinereason", fv_src, out, subsets=["alpha"], progress=False)
    odd = tmp_path / "odd"
    write_parquet(str(odd / "s" / "x.parquet"), [{"images": []}], pa.schema([("images", pa.list_(IMAGE))]))
    with pytest.raises(ConvertError, match=rf"{odd / 's' / 'x.parquet'}: no column 'texts'"):
        convert("finevision", str(odd), out, progress=False)
    assert not os.path.exists(out)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConvertError, match="not a conversion"):
        convert("finevision", fv_src, str(foreign), progress=False)
    assert os.listdir(foreign) == ["notes.txt"]


def test_corrupt_shards_fail_alone_and_are_retried(fv_src, fv_out, tmp_path):
    src = str(tmp_path / "src")
    shutil.copytree(fv_src, src)
    no_footer, bad_page = os.path.join(src, B0 + ".parquet"), os.path.join(src, A0 + ".parquet")
    originals = {p: open(p, "rb").read() for p in (no_footer, bad_page)}
    with open(no_footer, "wb") as f:
        f.write(b"PAR1 this is not parquet")
    with open(bad_page, "r+b") as f:  # the footer reads, the first data page does not
        f.seek(200)
        f.write(b"\xff" * 64)
    out = str(tmp_path / "out")
    stats = convert("finevision", src, out, progress=False)
    assert [(f["shard"], f["path"]) for f in stats["failed_shards"]] == [(A0, bad_page), (B0, no_footer)]
    assert "unreadable after row 0" in stats["failed_shards"][0]["error"]
    assert "not a readable parquet file" in stats["failed_shards"][1]["error"]
    assert stats["totals"]["kept"] == 2  # A1's
    assert not os.path.exists(os.path.join(out, A0 + ".jsonl")) and not os.path.exists(os.path.join(out, B0 + ".jsonl"))
    assert not os.path.exists(os.path.join(out, A0 + ".jsonl.partial"))
    for path, data in originals.items():
        with open(path, "wb") as f:
            f.write(data)
    stats = convert("finevision", src, out, progress=False)
    assert stats["failed_shards"] == [] and stats["totals"]["kept"] == 7
    assert tree(out) == tree(fv_out)


# ------------------------------------------------------------------------------------------------ the other sources
LLAVA = pa.schema([("id", pa.string()), ("image", IMAGE),
                   ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())])))])


def conv(*turns):
    return [{"from": f, "value": v} for f, v in turns]


def test_llava_ov15(tmp_path):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    write_parquet(os.path.join(src, "CLEVR", "train-00000-of-00001.parquet"), [
        {"id": "c1", "image": img(encoded((32, 16), (10, 20, 30))),
         "conversations": conv(("human", "<image>\nHow many?"), ("gpt", "3"), ("user", "Sure?"), ("assistant", "Yes"))},
        {"id": "c2", "image": None, "conversations": conv(("system", "Be brief."), ("human", "Hi"), ("gpt", "Hello"))},
        {"id": "c3", "image": None, "conversations": conv(("robot", "beep"), ("gpt", "boop"))},
        {"id": "c4", "image": None, "conversations": conv(("human", "Q"), ("gpt", "A"), ("human", "And?"))},
        {"id": "c5", "image": img(encoded((8, 8), (0, 0, 0), "RGBA")),
         "conversations": conv(("system", " "), ("human", "Q <image>"), ("gpt", "A"))},
        {"id": "c6", "image": None, "conversations": []},
    ], LLAVA)
    stats = convert("llava_ov15", src, out, progress=False)
    name = "CLEVR/train-00000-of-00001"
    assert records(out, name) == [
        {"messages": [SYSTEM, user(image(f"images/{name}/00000000_0.jpg"), text("How many?")), answer("3"),
                      user(text("Sure?")), answer("Yes")], "id": "c1", "source": "llava_ov15/CLEVR"},
        {"messages": [{"role": "system", "content": "Be brief."}, user(text("Hi")), answer("Hello")], "id": "c2",
         "source": "llava_ov15/CLEVR"},
        {"messages": [SYSTEM, user(image(f"images/{name}/00000004_0.jpg"), text("Q ")), answer("A")], "id": "c5",
         "source": "llava_ov15/CLEVR"},
    ]
    assert stored(out, f"images/{name}/00000004_0.jpg")[:3] == ("RGB", (8, 8), "JPEG")
    assert stats["totals"]["dropped"] == {"no assistant answer": 1, "no text turns": 1, "unknown role": 1}


MMFINE = pa.schema([("question", pa.string()), ("id", pa.string()), ("image", IMAGE),
                    ("original_answer", pa.string()), ("qwen3vl_235b_thinking_response", pa.string())])


def test_mmfinereason_in_a_data_folder(tmp_path):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")

    def row(q, i, im, orig, think):
        return {"question": q, "id": i, "image": im, "original_answer": orig, "qwen3vl_235b_thinking_response": think}
    write_parquet(os.path.join(src, "data", "sft-00000-of-00001.parquet"), [
        row("<image>\nSolve x.", "m1", img(encoded((20, 20), (5, 5, 5))), "4", "<think>t</think> 4"),
        row("Q2", "m2", None, " 5 ", ""),
        row("Q3", "m3", None, "", None),
        row("  Q4 ", None, None, "x", "A4\n"),
    ], MMFINE)
    stats = convert("mmfinereason", src, out, progress=False)
    name = "sft-00000-of-00001"
    assert records(out, name) == [
        {"messages": [SYSTEM, user(image(f"images/{name}/00000000_0.jpg"), text("Solve x.")),
                      answer("<think>t</think> 4")], "id": "m1", "source": "mmfinereason"},
        {"messages": [SYSTEM, user(text("Q2")), answer("5")], "id": "m2", "source": "mmfinereason"},
        {"messages": [SYSTEM, user(text("Q4")), answer("A4")], "id": f"{name}/3", "source": "mmfinereason"},
    ]
    assert stats["by_source"]["mmfinereason"]["dropped"] == {"no assistant answer": 1}


PART = pa.struct([("type", pa.string()), ("text", pa.string()), ("image", IMAGE), ("video", pa.string())])
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.list_(PART))]))


def write_arrow_dataset(root, tables):
    os.makedirs(root)
    names = [f"data-{i:05d}-of-{len(tables):05d}.arrow" for i in range(len(tables))]
    for name, table in zip(names, tables):
        with pa.OSFile(os.path.join(root, name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=1)
    with open(os.path.join(root, "state.json"), "w") as f:
        json.dump({"_data_files": [{"filename": n} for n in names], "_fingerprint": "0", "_format_columns": None,
                   "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None}, f)
    with open(os.path.join(root, "dataset_info.json"), "w") as f:
        json.dump({"citation": "", "description": "", "features": {}}, f)


def part(kind, value=None):
    return {"type": kind, "text": value if kind == "text" else None, "image": value if kind == "image" else None,
            "video": value if kind == "video" else None}


def test_hf_arrow_with_struct_messages(tmp_path):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    first = pa.Table.from_pylist([
        {"messages": [{"role": "system", "content": [part("text", "Sys")]},
                      {"role": "user", "content": [part("image", img(encoded((16, 8), (50, 60, 70), "P"))),
                                                   part("text", "Describe <image>")]},
                      {"role": "assistant", "content": [part("text", "A box.")]}], "length": 10},
        {"messages": [{"role": "user", "content": [part("text", "No answer")]}], "length": 3},
    ], schema=pa.schema([("messages", MESSAGES), ("length", pa.int64())]))
    second = pa.Table.from_pylist([
        {"messages": [{"role": "user", "content": [part("image", img(b"\x89PNG broken"))]},
                      {"role": "assistant", "content": [part("text", "?")]}], "length": 1},
    ], schema=first.schema)
    write_arrow_dataset(src, [first, second])
    stats = convert("hf_arrow", src, out, progress=False)
    name = "data-00000-of-00002"
    assert records(out, name) == [
        {"messages": [{"role": "system", "content": [text("Sys")]},
                      user(image(f"images/{name}/00000000_0.jpg"), text("Describe <image>")), answer("A box.")],
         "id": f"{name}/0", "source": "hf_arrow"},
    ]
    assert stored(out, f"images/{name}/00000000_0.jpg")[:3] == ("RGB", (16, 8), "JPEG")
    assert records(out, "data-00001-of-00002") == []
    assert stats["totals"]["dropped"] == {"no assistant answer": 1, "undecodable image": 1}


def test_hf_arrow_with_json_messages_paths_and_videos(tmp_path):
    src, out, media = str(tmp_path / "src"), str(tmp_path / "out"), tmp_path / "media"
    (media / "clips").mkdir(parents=True)
    (media / "clips" / "v.MP4").write_bytes(b"not decoded, only copied")
    (media / "pics").mkdir()
    (media / "pics" / "a.png").write_bytes(encoded((30, 20), (0, 128, 0), "RGBA"))
    rows = [
        [{"role": "user", "content": [{"type": "video", "video": "clips/v.MP4", "fps": 2.0, "text": None},
                                      {"type": "text", "text": "What happens?"}]},
         {"role": "assistant", "content": "Nothing."}],
        [{"role": "user", "content": [{"image": "pics/a.png"}, {"text": "And here?"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "Green."}]}],
        [{"role": "user", "content": [{"type": "video", "video": "clips/gone.mp4"}]},
         {"role": "assistant", "content": "x"}],
        [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]}, {"role": "assistant", "content": "x"}],
        "not json [",
        [],
    ]
    write_arrow_dataset(src, [pa.table({"messages": [r if isinstance(r, str) else json.dumps(r) for r in rows]})])
    stats = convert("hf_arrow", src, out, image_root=str(media), system="Sys", progress=False)
    name = "data-00000-of-00001"
    assert records(out, name) == [
        {"messages": [{"role": "system", "content": "Sys"},
                      user({"type": "video", "video": f"videos/{name}/00000000_0.mp4", "fps": 2.0},
                           text("What happens?")), {"role": "assistant", "content": "Nothing."}],
         "id": f"{name}/0", "source": "hf_arrow"},
        {"messages": [{"role": "system", "content": "Sys"}, user(image(f"images/{name}/00000001_0.jpg"),
                                                                  text("And here?")), answer("Green.")],
         "id": f"{name}/1", "source": "hf_arrow"},
    ]
    assert open(os.path.join(out, "videos", name, "00000000_0.mp4"), "rb").read() == b"not decoded, only copied"
    assert stored(out, f"images/{name}/00000001_0.jpg")[:3] == ("RGB", (30, 20), "JPEG")
    assert stats["totals"]["dropped"] == {"malformed messages": 1, "no text turns": 1, "unknown content type": 1,
                                          "video not found": 1}
    assert stats["totals"]["videos"] == 1


# ------------------------------------------------------------------------------------------------ command line
def test_command_line(fv_src, fv_out, tmp_path):
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "bard_jax.data.convert", "finevision", "--src", fv_src, "--out", out]
    done = subprocess.run(cmd + ["--workers", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "7 of 12 rows kept in 3 shards" in done.stdout and "row" in done.stderr  # the summary; the progress bar
    assert tree(out) == tree(fv_out)
    bad = subprocess.run(cmd + ["--subsets", "gamma"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "error: " in bad.stderr and "no subset gamma" in bad.stderr and "Traceback" not in bad.stderr
    # It ends with the command that trains on its output.
    assert f"train on it: python -m bard_jax.train --recipe recipes/pbm_b4.py --recipe.data.train_jsonl={out} " \
        f"--recipe.data.image_root={out}" in done.stdout
    # Numbers that would tie OUT to an empty conversion, or start no worker: refused before anything is written.
    for flags, fragment in ((["--limit", "0"], "--limit 0: expected at least 1 source row"),
                            (["--workers", "-1"], "--workers -1: expected 0 or more processes")):
        fresh = str(tmp_path / "fresh")
        refused = subprocess.run([*cmd[:-1], fresh, *flags], capture_output=True, text=True)
        assert refused.returncode == 2 and fragment in refused.stderr and not os.path.exists(fresh)


# ------------------------------------------------------------------------------------------------ training pipeline
def test_converted_output_feeds_the_training_pipeline(tmp_path):
    from bard_jax.data.jsonl_records import open_records
    from bard_jax.data.pipeline import PipelineConfig, TrainStream
    from bard_jax.data.processor import Processor
    from bard_jax.data.synthetic import build_tokenizer

    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    rows = [fv_row([img(encoded((64, 64), (220, 40, 40)))], [("<image>\nwhat color is the circle ?", "red")]),
            fv_row([img(encoded((64, 96), (40, 80, 220))), img(encoded((32, 32), (0, 0, 0), "P"))],
                   [("how many shapes are there ?", "2"), ("what color is the square ?", "blue")]),
            fv_row([], [("where is the 3 ?", "top left")])] * 2
    write_parquet(os.path.join(src, "syn", "train-00000-of-00001.parquet"), rows, FINEVISION)
    convert("finevision", src, out, progress=False)
    build_tokenizer(str(tmp_path / "tok"))
    proc = Processor.from_pretrained(str(tmp_path / "tok"))
    cfg = PipelineConfig(global_batch_size=2, block_size=4, length_buckets=(128, 256), pixel_rows=256, max_images=2,
                         strict=True)
    stream = TrainStream(open_records(out), proc, cfg, image_root=out)
    batches = [stream.next_batch() for _ in range(3)]
    stream.close()
    with_images = [b for b in batches if "pixel_values" in b]
    assert with_images and all(b["pixel_values"].shape[0] > 0 for b in with_images)
    assert not stream.skipped


def test_an_unreadable_state_json_is_named_not_reported_missing(tmp_path):
    from bard_jax.data.convert.arrow_rows import find_files
    from bard_jax.data.convert.errors import ConvertError

    src = tmp_path / "src"
    src.mkdir()
    (src / "state.json").write_text("{not json")
    with pytest.raises(ConvertError, match=r"state.json cannot be read \(JSONDecodeError.*holds no \*.arrow file"):
        find_files(str(src))
    (src / "data-00000-of-00001.arrow").write_bytes(b"")  # the fallback: the data files as datasets names them
    assert [os.path.basename(p) for _, p in find_files(str(src))] == ["data-00000-of-00001.arrow"]


def test_finevision_texts_as_a_json_string_are_read_and_garbage_is_a_counted_drop():
    from bard_jax.data.convert.conversation import MALFORMED_MESSAGES, RowDropped
    from bard_jax.data.convert.finevision import rounds_of

    rounds = [{"user": "What is it?", "assistant": "A cat."}]
    assert rounds_of(json.dumps(rounds)) == rounds == rounds_of(rounds)
    assert rounds_of(None) == []
    for bad in ("{not json", "[1, 2]", 7, ["a"]):
        with pytest.raises(RowDropped) as e:
            rounds_of(bad)
        assert e.value.reason == MALFORMED_MESSAGES
