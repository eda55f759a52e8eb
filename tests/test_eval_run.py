"""`python -m bard_jax.eval run|score` end to end on the fixture datasets with a tiny random checkpoint.

The checkpoint is the tiny preset sized to the synthetic task's word-level tokenizer (saved with our exporter next
to the tokenizer and processor files), so `load_pretrained` and `Processor.from_pretrained` both read it. The fixture
texts are mostly unknown words to that tokenizer and the answers are noise: these tests check the pipeline
(prompts, batching, resume, files, errors), not accuracy. The runs go through `main` in this process so that runs
of the same shapes share compiled programs; `score` also runs once as a real subprocess.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers_eval import DEFAULT_ROWS, write_all_fixtures, write_fixture

import bard_jax as bj
from bard_jax import cli, hf
from bard_jax.data import Processor
from bard_jax.data.synthetic import build_tokenizer
from bard_jax.eval import decode
from bard_jax.eval.__main__ import PROG, main
from bard_jax.eval.prompts import SYSTEM_PROMPT, answer_text, chat_messages, special_ids
from bard_jax.eval.samples import read_samples
from bard_jax.eval.scoring import SCORERS

# Small images (the synthetic tokenizer's own bounds) and short answers keep the decodes fast; --max-new-tokens is
# a smoke-run override, not the paper's setting.
FAST = ["--min-pixels", "4096", "--max-pixels", "16384", "--max-new-tokens", "4", "--dtype", "float32"]
N_DOCS = {"mmmu_val": 5, "chartqa": 4}
REAL_DECODE = decode.decode_batch


def tiny_checkpoint(root: str) -> str:
    """The tiny preset with the synthetic tokenizer's vocabulary and special ids, random weights filled on the host
    (no init compile). The mask row of the tied embedding is zero, so the head never prefers the mask id and the
    answers hold words."""
    tok_dir = os.path.join(root, "tokenizer")
    build_tokenizer(tok_dir)
    proc = Processor.from_pretrained(tok_dir)
    tid = proc.tokenizer.convert_tokens_to_ids
    base = bj.preset("tiny")
    cfg = base.replace(text=dataclasses.replace(base.text, vocab_size=len(proc.tokenizer)),
                       image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
                       vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"))
    shapes = jax.eval_shape(lambda key: bj.init_params(cfg, key), jax.random.key(0))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return np.ones(leaf.shape, np.float32)
        return rng.normal(0.0, 1.0 if "embedding" in name else 0.1, leaf.shape).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(fill, shapes)
    params["language_model"]["embed_tokens"]["embedding"][tid("<|mask|>")] = 0.0
    return hf.save_converted(params, cfg, None, os.path.join(root, "model"), side_files_from=tok_dir)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt")))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_all_fixtures(root)
    return str(root)


def run_cli(argv: list[str]) -> int:
    return cli.run(main, prog=PROG, argv=argv)


def run_args(ckpt, root, out, tasks="mmmu_val,chartqa", *extra) -> list[str]:
    return ["run", "--model", ckpt, "--data-root", root, "--tasks", tasks, "--out", str(out), *FAST, *extra]


class DecodeSpy:
    """Wraps `decode.decode_batch`: records each call's encodings, optionally raises after `fail_after` calls."""

    def __init__(self, monkeypatch, fail_after: int | None = None):
        self.calls: list[list[dict]] = []
        self.fail_after = fail_after
        real = REAL_DECODE  # not the attribute: an earlier spy of the same test may still be installed

        def spy(model, encodings, config, pad_id):
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise RuntimeError("interrupted")
            self.calls.append(encodings)
            return real(model, encodings, config, pad_id)

        monkeypatch.setattr(decode, "decode_batch", spy)

    @property
    def docs(self) -> int:
        return sum(len(c) for c in self.calls)


def lines_of(out, task) -> dict[int, dict]:
    """samples.jsonl by doc id, without the wall-time share (the only field that differs between equal runs)."""
    return {line["doc_id"]: {k: v for k, v in line.items() if k != "seconds"}
            for line in read_samples(os.path.join(out, task, "samples.jsonl"))}


@pytest.fixture(scope="module")
def baseline(ckpt, data_root, tmp_path_factory):
    """Diffusion runs of mmmu_val (one batch: rows of 1, 2 and 3 images together) and chartqa (two documents per
    batch) into one OUT, with the decode calls recorded. (One batch for MMMU: each batch shape is a compilation.)"""
    out = tmp_path_factory.mktemp("baseline") / "out"
    with pytest.MonkeyPatch.context() as mp:
        spy = DecodeSpy(mp)
        assert run_cli(run_args(ckpt, data_root, out, "mmmu_val", "--batch-size", "8")) == 0
        assert run_cli(run_args(ckpt, data_root, out, "chartqa", "--batch-size", "2")) == 0
    return out, spy


# ------------------------------------------------------------------------------------------------ unit pieces
def test_prompt_and_answer_follow_the_release_wrapper(ckpt):
    proc = Processor.from_pretrained(ckpt)
    tok = proc.tokenizer
    mask_id, eos_id = special_ids(proc)
    assert (mask_id, eos_id) == (tok.convert_tokens_to_ids("<|mask|>"), tok.convert_tokens_to_ids("<|im_end|>"))
    messages = chat_messages(["im1", "im2"], "what color ?")
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert [p["type"] for p in messages[1]["content"]] == ["image", "image", "text"]
    ids = tok.encode("the red circle .", add_special_tokens=False)
    row = np.array(ids[:2] + [mask_id] + ids[2:] + [eos_id, *ids[:2]])
    # As the release: strip, then drop one "." (the word-level decode leaves the space before it).
    assert answer_text(row, tok, eos_id=eos_id, mask_id=mask_id) == "the red circle "
    assert answer_text(np.array([eos_id, *ids]), tok, eos_id=eos_id, mask_id=mask_id) == ""


def test_batches_are_left_padded_to_a_bucketed_length():
    assert [decode.prompt_bucket(n) for n in (1, 32, 33, 100, 1000)] == [32, 32, 36, 104, 1024]
    a = {"input_ids": np.array([[5, 6, 7]]), "pixel_values": np.ones((4, 3)), "image_grid_thw": np.array([[1, 2, 2]])}
    b = {"input_ids": np.array([[8]])}
    batch = decode.collate([a, b], pad_id=0)
    assert batch["input_ids"].shape == (2, 32) and batch["input_ids"][0, -3:].tolist() == [5, 6, 7]
    assert batch["attention_mask"].sum(axis=1).tolist() == [3, 1] and batch["attention_mask"][1, -1] == 1
    assert batch["pixel_values"].shape == (4, 3) and batch["image_grid_thw"].tolist() == [[1, 2, 2]]


# ------------------------------------------------------------------------------------------------ end to end
def test_run_writes_samples_results_and_the_paper_table(baseline):
    out, spy = baseline
    assert [len(c) for c in spy.calls] == [5, 2, 2]
    # MMMU rows with several images: each prompt carries every image its question refers to.
    grids = [len(e["image_grid_thw"]) for c in spy.calls for e in c]
    assert grids.count(3) == 1 and grids.count(2) == 1
    results = json.load(open(out / "results.json"))["tasks"]
    assert list(results) == ["mmmu_val", "chartqa"]
    for task, n in N_DOCS.items():
        lines = lines_of(out, task)
        assert sorted(lines) == list(range(n))
        for line in lines.values():
            assert set(line) >= {"doc_id", "prediction", "target", "record", "nfe", "generated_tokens",
                                 "tokens_per_forward", "error"}
            assert line["nfe"] >= 2 and line["error"] is None and not line["prediction"].endswith(".")
        r = results[task]
        assert r["metrics"] == SCORERS[task].aggregate([line["record"] for line in lines.values()])
        assert r["n_docs"] == n and r["undecodable_images"] == 0 and r["complete"]
        assert r["nfe_total"] == sum(line["nfe"] for line in lines.values())
        assert r["settings"]["decoder"] == "diffusion" and r["settings"]["block_size"] == 4
        assert r["settings"]["denoising_steps"] == 4 and r["settings"]["confidence_threshold"] == 1.0
    assert any(line["prediction"] for line in lines_of(out, "chartqa").values())
    chart = lines_of(out, "chartqa")
    assert [chart[i]["target"] for i in range(4)] == ["42", "Italy", "12.5", "2018"]
    table = (out / "results.md").read_text().splitlines()
    assert table[0] == "| model | MMMU | MMMU-Pro | MME | RealWorldQA | MMStar | AI2D | ChartQA |"
    cells = [c.strip() for c in table[2].split("|")[2:-1]]
    assert cells[0] == f"{100 * results['mmmu_val']['metrics']['accuracy']:.1f}"
    assert cells[1:6] == ["-"] * 5 and cells[6] == f"{100 * results['chartqa']['metrics']['relaxed_overall']:.1f}"


def test_ar_decoder_run(ckpt, data_root, tmp_path):
    out = tmp_path / "out"
    assert run_cli(run_args(ckpt, data_root, out, "mmmu_val,chartqa", "--decoder", "ar", "--batch-size", "8")) == 0
    results = json.load(open(out / "results.json"))["tasks"]
    for task, n in N_DOCS.items():
        lines = lines_of(out, task)
        assert sorted(lines) == list(range(n))
        assert all(line["nfe"] == line["generated_tokens"] and line["tokens_per_forward"] == 1.0
                   for line in lines.values())
        settings = results[task]["settings"]
        assert settings["decoder"] == "ar" and settings["block_size"] is None and settings["max_new_tokens"] == 4
    assert "| AR |" in (out / "results.md").read_text()


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(ckpt, data_root, baseline, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = run_args(ckpt, data_root, out, "chartqa", "--batch-size", "2")
    first = DecodeSpy(monkeypatch, fail_after=1)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_cli(args)
    assert first.docs == 2 and len(lines_of(out, "chartqa")) == 2
    assert not json.load(open(out / "chartqa" / "run.json"))["complete"]
    with open(out / "chartqa" / "samples.jsonl", "a") as f:
        f.write('{"doc_id": 3, "predic')  # killed while writing a line: dropped and redone
    again = DecodeSpy(monkeypatch)
    assert run_cli(args) == 0
    assert again.docs == 2  # only the two documents the first run did not finish
    assert lines_of(out, "chartqa") == lines_of(baseline[0], "chartqa")
    assert json.load(open(out / "results.json"))["tasks"]["chartqa"]["complete"]


def test_an_undecodable_image_is_counted_and_scored_wrong(ckpt, tmp_path):
    root = tmp_path / "data"
    rows = DEFAULT_ROWS["chartqa"]()
    rows.insert(1, {"type": "human_test", "question": "What is shown?", "answer": "7", "image": b"not a png"})
    write_fixture(root, "chartqa", rows)
    out = tmp_path / "out"
    assert run_cli(run_args(ckpt, str(root), out, "chartqa", "--batch-size", "2")) == 0
    lines = lines_of(out, "chartqa")
    assert sorted(lines) == list(range(5))
    bad = lines[1]
    assert bad["prediction"] == "" and bad["nfe"] is None and "undecodable image" in bad["error"]
    assert bad["record"]["relaxed"] == 0.0 and bad["target"] == "7"
    summary = json.load(open(out / "results.json"))["tasks"]["chartqa"]
    assert summary["undecodable_images"] == 1 and summary["n_docs"] == 5


# ------------------------------------------------------------------------------------------------ score
def test_score_subcommand_prints_the_metrics_last(data_root, tmp_path):
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"doc_id": i, "prediction": p}) + "\n"
                             for i, p in [(0, "42"), (1, "Italy"), (2, "15")]))
    proc = subprocess.run([sys.executable, "-m", "bard_jax.eval", "score", "--task", "chartqa", "--data-root",
                           data_root, "--predictions", str(preds)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["relaxed_overall"] == pytest.approx(2 / 3) and metrics["relaxed_human_split"] == 1.0


@pytest.mark.parametrize("ids,fragment", [
    ([0, 7, 99], "doc ids not in the chartqa split (4 rows, ids 0..3): 7, 99"),
    ([0, 1, 1, 2, 2], "duplicate doc ids 1, 2"),
])
def test_score_refuses_unknown_or_duplicate_doc_ids(data_root, tmp_path, capsys, ids, fragment):
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"doc_id": i, "prediction": "x"}) + "\n" for i in ids))
    status = run_cli(["score", "--task", "chartqa", "--data-root", data_root, "--predictions", str(preds)])
    err = capsys.readouterr().err
    assert status == 1 and fragment in err, err


# ------------------------------------------------------------------------------------------------ bad inputs
def snapshot(path) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(path) for f in files}


def error_of(argv, capsys) -> str:
    """The command's one error line (exit status 1)."""
    assert run_cli(argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"{PROG}: error: "), errors
    return errors[0]


def test_bad_inputs_are_one_line_errors_before_anything_is_written(ckpt, data_root, baseline, tmp_path, capsys):
    out = tmp_path / "fresh"
    assert "unknown task 'nope'" in error_of(run_args(ckpt, data_root, out, "chartqa,nope"), capsys)
    empty = tmp_path / "empty_root"
    write_fixture(empty, "chartqa")
    msg = error_of(run_args(ckpt, str(empty), out, "chartqa,realworldqa"), capsys)
    assert os.path.join(str(empty), "lmms-lab", "RealWorldQA") in msg
    assert "not a weights directory" in error_of(run_args(str(tmp_path), data_root, out, "chartqa"), capsys)
    assert not out.exists()
    # An OUT holding a run of other settings: refused, naming both, and nothing in it changes.
    held = tmp_path / "held"
    shutil.copytree(baseline[0], held)
    before = snapshot(held)
    msg = error_of(run_args(ckpt, data_root, held, "chartqa", "--block-size", "8"), capsys)
    assert "block_size=4" in msg and "block_size=8" in msg and "denoising_steps=4" in msg
    msg = error_of(run_args(ckpt, data_root, held, "chartqa", "--decoder", "ar"), capsys)
    assert "decoder='diffusion'" in msg and "decoder='ar'" in msg
    assert snapshot(held) == before


def test_the_synthetic_task_in_process_with_warmup_and_the_checkpoints_own_image_sizes(ckpt, tmp_path, monkeypatch):
    """The Mini-BARD path: the embedded task's held-out records, no system turn, the model and processor passed in,
    every new batch shape decoded once untimed before the timed call."""
    from bard_jax.data.synthetic import generate
    from bard_jax.eval.runner import run
    from bard_jax.eval.settings import RunSettings

    root = generate(str(tmp_path / "syn"), n=2, seed=0, n_eval=6)
    processor = Processor.from_pretrained(os.path.join(root, "tokenizer"))
    model = bj.load_pretrained(ckpt)
    spy = DecodeSpy(monkeypatch)
    settings = RunSettings(model=ckpt, max_new_tokens=4, min_pixels=None, max_pixels=None, dtype="float32",
                           commit="reuse")
    run(settings, root, ["synthetic"], str(tmp_path / "out"), batch_size=3, limit=6, model=model,
        processor=processor, warmup=True)
    lines = read_samples(str(tmp_path / "out" / "synthetic" / "samples.jsonl"))
    assert sorted(line["doc_id"] for line in lines) == list(range(6))
    assert all(line["denoising_forwards"] >= 1 and line["record"]["qtype"] for line in lines)
    # Two batches of 3; each distinct batch shape was decoded twice (warm-up, then timed), a repeated one once.
    shapes = [(len(c), max(e["input_ids"].shape[1] for e in c)) for c in spy.calls]
    assert len(spy.calls) in (3, 4) and shapes[0] == shapes[1]
    # No system turn, and the images at the task's own size (the checkpoint's processor, not the release's bounds).
    first = spy.calls[0][0]
    text = processor.tokenizer.decode(first["input_ids"][0])
    assert "system" not in text and first["image_grid_thw"].tolist() in ([[1, 4, 6]], [[1, 4, 4]])
    run_file = json.load(open(tmp_path / "out" / "synthetic" / "run.json"))
    assert run_file["settings"]["commit"] == "reuse" and run_file["settings"]["min_pixels"] is None
    # Its results table: the score it computed, and no paper table of dashes (no paper task ran).
    table = (tmp_path / "out" / "results.md").read_text()
    score = json.load(open(tmp_path / "out" / "results.json"))["tasks"]["synthetic"]["headline"]["value"]
    assert "| model | MMMU" not in table
    row = next(line for line in table.splitlines() if line.startswith("| synthetic |"))
    assert row.split("|")[2:4] == [" exact_match ", f" {100 * score:.1f}* "]  # * : --limit 6, not the whole split


def test_the_cli_keeps_the_synthetic_tasks_own_image_sizes_unless_told():
    from bard_jax.eval.__main__ import pixel_range
    from bard_jax.eval.settings import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS

    assert pixel_range(["synthetic"], None, None) == (None, None)  # the checkpoint's own processor settings
    assert pixel_range(["synthetic"], 4096, None) == (4096, None)
    assert pixel_range(["mme"], None, None) == (DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)  # the release's range
    assert pixel_range(["mme", "synthetic"], None, 1 << 20) == (DEFAULT_MIN_PIXELS, 1 << 20)


def test_an_out_is_tied_to_the_model_and_its_weights(ckpt, data_root, baseline, tmp_path, capsys):
    """A rerun into the OUT of an earlier evaluation is refused when the model at that path was retrained since
    (other weights, same path), and so is a run of another model into it: nothing in OUT changes."""

    model = tmp_path / "model"
    shutil.copytree(ckpt, model)
    held = tmp_path / "held"
    shutil.copytree(baseline[0], held)
    for task in ("mmmu_val", "chartqa"):  # the same evaluation, recorded as of the copied model's path
        path = held / task / "run.json"
        state = json.loads(path.read_text())
        assert len(state["settings"]["model_digest"]) == 16
        state["settings"]["model"] = str(model)
        path.write_text(json.dumps(state))
    before = snapshot(held)
    # Same path, same contents: it resumes (nothing left to decode), so the check lets it through.
    assert run_cli(run_args(str(model), data_root, held, "chartqa")) == 0
    assert snapshot(held)["chartqa/samples.jsonl"] == before["chartqa/samples.jsonl"]
    before = snapshot(held)
    # "Retrained": the largest weights file at the same path now holds other bytes.
    weights = max((os.path.join(d, f) for d, _, fs in os.walk(model / "params") for f in fs), key=os.path.getsize)
    data = bytearray(open(weights, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(weights, "wb").write(bytes(data))
    msg = error_of(run_args(str(model), data_root, held, "chartqa"), capsys)
    assert f"holds results of {model} when it held other weights" in msg and "digest" in msg
    # Another model into the same OUT, for another task: refused, both named.
    msg = error_of(run_args(ckpt, data_root, held, "realworldqa"), capsys)
    assert f"holds results of another model ({model}" in msg and f"evaluates {ckpt}" in msg
    assert snapshot(held) == before


def test_the_weights_digest_reads_contents_not_paths_or_times(ckpt, tmp_path):
    from bard_jax.hf.digest import weights_digest

    copy = tmp_path / "copy"
    shutil.copytree(ckpt, copy)
    assert weights_digest(copy) == weights_digest(ckpt)
    config = copy / "bard_jax_config.json"
    os.utime(config, (0, 0))
    assert weights_digest(copy) == weights_digest(ckpt)
    config.write_text(config.read_text() + " ")
    assert weights_digest(copy) != weights_digest(ckpt)


def test_empty_splits_empty_pixel_ranges_and_a_refused_runs_leftovers(ckpt, data_root, tmp_path, capsys,
                                                                       monkeypatch):

    out = tmp_path / "out"
    # An empty split is not scored (a score of 0 over no document would read as a real one).
    empty = tmp_path / "empty_root"
    write_fixture(empty, "chartqa", rows=[], n_files=1)
    msg = error_of(run_args(ckpt, str(empty), out, "chartqa"), capsys)
    assert "task chartqa: its split holds no documents" in msg
    # A text column of another type (an answer stored as numbers) is named before anything is decoded.
    import pyarrow as pa
    import pyarrow.parquet as pq

    typed = tmp_path / "typed_root"
    write_fixture(typed, "chartqa", rows=[{"type": "human_test", "question": "How many?", "answer": "7"}], n_files=1)
    for d, _, files in os.walk(typed):
        for name in (f for f in files if f.endswith(".parquet")):
            table = pq.read_table(os.path.join(d, name))
            column = table.schema.get_field_index("answer")
            pq.write_table(table.set_column(column, "answer", pa.array([7], pa.int64())), os.path.join(d, name))
    msg = error_of(run_args(ckpt, str(typed), out, "chartqa"), capsys)
    assert "column 'answer' holds int64, not text" in msg and ".parquet" in msg
    # An empty pixel range is refused before anything loads.
    msg = error_of(["run", "--model", ckpt, "--data-root", data_root, "--tasks", "chartqa", "--out", str(out),
                    "--min-pixels", "20000", "--max-pixels", "10000"], capsys)
    assert "--min-pixels 20000 and --max-pixels 10000: the image pixel range is empty" in msg
    assert not out.exists()
    # A run that stops before its first sample leaves run.json; the corrected command (other settings) takes over.
    monkeypatch.setattr(decode, "decode_batch", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stopped")))
    with pytest.raises(RuntimeError, match="stopped"):
        run_cli(run_args(ckpt, data_root, out, "chartqa", "--debug"))
    assert (out / "chartqa" / "run.json").is_file()
    monkeypatch.setattr(decode, "decode_batch", REAL_DECODE)
    assert run_cli(run_args(ckpt, data_root, out, "chartqa", "--block-size", "8", "--batch-size", "4")) == 0
    assert json.load(open(out / "chartqa" / "run.json"))["settings"]["block_size"] == 8
