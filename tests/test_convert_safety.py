"""The convert commands never lose data: what they refuse to replace (unrelated folders, the source, its parent,
a folder inside it), what they replace only with --overwrite (their own earlier output), the clean-up of a killed
run's temporary folders, the output's permissions, and the message for a training workdir passed as weights.

The scripts' `main(argv)` runs in-process (errors of ours propagate; `cli.run` turns them into one line), except in
one subprocess test of that line and the exit status.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="compares against transformers' torch models (the test extras)")
from helpers_hf import make_tiny_hf_checkpoint

import bard_jax as bj
from bard_jax import atomic_dir, cli, hf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"convert_{name}", os.path.join(REPO, "convert", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hf_to_jax, jax_to_hf = load_script("hf_to_jax"), load_script("jax_to_hf")
SCRIPTS = {"hf_to_jax": hf_to_jax, "jax_to_hf": jax_to_hf}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One tiny HF checkpoint (with a tokenizer side file) and its bard_jax conversion; tests copy, never edit."""
    root = tmp_path_factory.mktemp("made")
    src = make_tiny_hf_checkpoint(root / "hf")
    (root / "hf" / "tokenizer_config.json").write_text('{"model_max_length": 8}')
    hf.convert_hf(src, root / "ours")
    return {"hf_to_jax": root / "hf", "jax_to_hf": root / "ours"}


def digest(path):
    """{relative path: sha256} of every file under `path` (directories as entries too, so removals show)."""
    out = {}
    for dirpath, _, filenames in os.walk(path):
        rel = os.path.relpath(dirpath, path)
        out[rel + "/"] = ""
        for f in filenames:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.join(rel, f)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def source_copy(made, script, where):
    """A private copy of the script's source under `where` (tests may point DST at its parent)."""
    return shutil.copytree(made[script], where / "src")


def temp_name(dst, what, pid, host=None):
    """The name atomic_dir gives its temporary folders, as a killed writer with this pid would have left it."""
    return dst.parent / f".{dst.name}.{what}-{pid}@{host or atomic_dir._host()}-0123abcd"


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid  # exited and reaped: no such process (pids are not reused this soon)


def leftovers(parent):
    return sorted(p for p in os.listdir(parent) if ".partial-" in p or ".old-" in p)


# ------------------------------------------------------------------------------------------------ destinations
@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_unrelated_non_empty_destination_is_refused_and_untouched(tmp_path, made, script, overwrite):
    dst = tmp_path / "dst"
    (dst / "results").mkdir(parents=True)
    (dst / "notes.txt").write_text("my notes")
    (dst / "results" / "run1.csv").write_text("a,b\n1,2\n")
    (dst / "tokenizer_config.json").write_text("{}")  # one file a conversion writes does not make it an output
    before = digest(dst)
    with pytest.raises(hf.CheckpointError) as e:
        SCRIPTS[script].main([str(made[script]), str(dst)] + ["--overwrite"] * overwrite)
    msg = str(e.value)
    assert "\n" not in msg and "not an earlier output" in msg and "even with --overwrite" in msg
    assert "notes.txt" in msg and "results/" in msg and "choose a new or empty directory" in msg
    assert digest(dst) == before and not leftovers(tmp_path)


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_output_of_the_other_conversion_is_unrelated(tmp_path, made, script):
    """An HF checkpoint is not an earlier hf_to_jax output (and a bard_jax directory not a jax_to_hf one): a copy of
    the script's own kind of source, elsewhere, as DST."""
    dst = shutil.copytree(made[script], tmp_path / "dst")
    before = digest(dst)
    with pytest.raises(hf.CheckpointError, match="not an earlier output"):
        SCRIPTS[script].main([str(made[script]), str(dst), "--overwrite"])
    assert digest(dst) == before


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_destination_that_is_a_file_is_refused(tmp_path, made, script):
    dst = tmp_path / "dst"
    dst.write_text("keep me")
    with pytest.raises(hf.CheckpointError, match="exists and is not a directory"):
        SCRIPTS[script].main([str(made[script]), str(dst), "--overwrite"])
    assert dst.read_text() == "keep me"


def test_earlier_output_is_replaced_only_with_overwrite(tmp_path, made):
    ours, back = tmp_path / "ours", tmp_path / "back"
    ours.mkdir()  # an empty existing directory is fine
    assert hf_to_jax.main([str(made["hf_to_jax"]), str(ours)]) == 0
    (ours / "task.json").write_text("{}")  # a side file this source lacks: gone once the output is replaced
    before = digest(ours)
    with pytest.raises(hf.CheckpointError, match="holds an earlier output of convert/hf_to_jax.py.*--overwrite"):
        hf_to_jax.main([str(made["hf_to_jax"]), str(ours)])
    assert digest(ours) == before
    assert hf_to_jax.main([str(made["hf_to_jax"]), str(ours), "--overwrite", "--dtype", "bfloat16"]) == 0
    assert not (ours / "task.json").exists() and hf.read_converted_config(ours)
    assert '"dtype": "bfloat16"' in (ours / hf.CONVERTED_MARKER).read_text()

    # jax_to_hf: an earlier sharded export (shards + index + side files) is recognised and replaced.
    assert jax_to_hf.main([str(ours), str(back), "--max-shard-size", "200KB"]) == 0
    assert "model.safetensors.index.json" in os.listdir(back)
    before = digest(back)
    with pytest.raises(hf.CheckpointError, match="holds an earlier output of convert/jax_to_hf.py"):
        jax_to_hf.main([str(ours), str(back)])
    assert digest(back) == before
    assert jax_to_hf.main([str(ours), str(back), "--overwrite"]) == 0
    assert sorted(os.listdir(back)) == ["config.json", "generation_config.json", "model.safetensors",
                                        "tokenizer_config.json"]
    assert not leftovers(tmp_path)


def _relations(src):
    (src.parent / "link").symlink_to(src, target_is_directory=True)
    return {
        "same": src,
        "same_via_dotdot": src / "nonexistent" / ".." / ".." / "src",
        "same_via_symlink": src.parent / "link",
        "parent": src.parent,
        "parent_via_symlink": src.parent / "link" / "..",
        "inside": src / "out",
    }


@pytest.mark.parametrize("relation", ["same", "same_via_dotdot", "same_via_symlink", "parent", "parent_via_symlink",
                                      "inside"])
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_destination_overlapping_the_source_is_refused(tmp_path, made, script, relation):
    src = source_copy(made, script, tmp_path)
    dst = _relations(src)[relation]
    before = digest(tmp_path)
    with pytest.raises(hf.CheckpointError, match="the source directory") as e:
        SCRIPTS[script].main([str(src), str(dst), "--overwrite"])
    want = {"parent": "contains", "parent_via_symlink": "contains", "inside": "lies inside"}.get(relation, "is the")
    assert want in str(e.value)
    assert digest(tmp_path) == before  # every file of the source and its siblings, byte for byte
    assert not (src / "out").exists()


# ------------------------------------------------------------------------------------------------ killed runs
def test_stale_partial_of_a_dead_writer_is_removed_a_live_one_kept(tmp_path, made):
    dst = tmp_path / "ours"
    dead, live, elsewhere = (temp_name(dst, "partial", dead_pid()), temp_name(dst, "partial", os.getppid()),
                             temp_name(dst, "partial", dead_pid(), host="another-host"))
    for d in (dead, live, elsewhere):
        (d / "params").mkdir(parents=True)
    unrelated = tmp_path / ".other.partial-1-0123abcd"  # another destination's folder: not ours to judge
    unrelated.mkdir()
    assert hf_to_jax.main([str(made["hf_to_jax"]), str(dst)]) == 0
    assert not dead.exists()
    assert live.is_dir() and elsewhere.is_dir() and unrelated.is_dir()
    assert hf.is_converted_dir(dst)


def test_stale_old_folder_is_moved_back_when_the_destination_is_missing(tmp_path, made):
    """Killed between the two renames of the swap: the previous output sits in `.old-`, DST is missing. The next
    run brings it back (and, without --overwrite, then refuses to replace it); with DST present it is removed."""
    dst = tmp_path / "back"
    old = temp_name(dst, "old", dead_pid())
    old.mkdir()
    previous = shutil.copytree(made["hf_to_jax"], old / dst.name)
    before = digest(previous)
    stale_partial = temp_name(dst, "partial", dead_pid())
    stale_partial.mkdir()  # the new version the killed run had finished writing
    with pytest.raises(hf.CheckpointError, match="holds an earlier output of convert/jax_to_hf.py"):
        jax_to_hf.main([str(made["jax_to_hf"]), str(dst)])
    assert digest(dst) == before and not leftovers(tmp_path)

    old2 = temp_name(dst, "old", dead_pid())
    (old2 / dst.name).mkdir(parents=True)
    (old2 / dst.name / "config.json").write_text("{}")
    assert hf.clean_stale_temp_dirs(dst) == [f"removed {old2}"]
    assert digest(dst) == before and not leftovers(tmp_path)


def test_outputs_get_ordinary_permissions(tmp_path, made):
    previous = os.umask(0o022)
    try:
        assert hf_to_jax.main([str(made["hf_to_jax"]), str(tmp_path / "ours")]) == 0
        assert jax_to_hf.main([str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    finally:
        os.umask(previous)
    for d in ("ours", "back"):
        assert os.stat(tmp_path / d).st_mode & 0o777 == 0o755, d


# ------------------------------------------------------------------------------------------------ weights dirs
def test_training_workdir_as_source(tmp_path, made):
    work = tmp_path / "runs" / "demo"
    (work / "checkpoints" / "100").mkdir(parents=True)
    (work / "metrics.jsonl").write_text('{"step": 1}\n')
    for call in (lambda: jax_to_hf.main([str(work), str(tmp_path / "out")]),
                 lambda: hf_to_jax.main([str(work), str(tmp_path / "out")]),
                 lambda: bj.load_pretrained(work)):
        with pytest.raises(hf.CheckpointError) as e:
            call()
        assert str(e.value) == (f"{work} is a training workdir whose run has not exported yet (no {work}/export): "
                                f"its training checkpoints are in {work}/checkpoints; re-running the training "
                                f"command resumes the run and writes {work}/export when it finishes")
    shutil.copytree(made["jax_to_hf"], work / "export")
    for call in (lambda: jax_to_hf.main([str(work), str(tmp_path / "out")]), lambda: bj.load_pretrained(work)):
        with pytest.raises(hf.CheckpointError) as e:
            call()
        assert str(e.value) == (f"{work} is a training workdir, not a weights directory: pass {work}/export "
                                "(written when training finishes)")
    (tmp_path / "empty").mkdir()
    with pytest.raises(hf.CheckpointError, match=r"empty: not a weights directory \(neither config.json"):
        jax_to_hf.main([str(tmp_path / "empty"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_refusal_is_one_line_and_exit_status_1(tmp_path, made):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "notes.txt").write_text("my notes")
    r = subprocess.run([sys.executable, os.path.join(REPO, "convert", "hf_to_jax.py"), str(made["hf_to_jax"]),
                        str(dst), "--overwrite"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and len(lines) == 2, r.stderr
    assert lines[0].startswith("python convert/hf_to_jax.py: error: ") and "notes.txt" in lines[0]
    assert lines[1] == "python convert/hf_to_jax.py: (run with --debug for the traceback)"
    assert (dst / "notes.txt").read_text() == "my notes"
    with pytest.raises(hf.CheckpointError):  # --debug: the error itself, with its traceback
        cli.run(hf_to_jax.main, prog="x", argv=[str(made["hf_to_jax"]), str(dst), "--debug"])
    for script in SCRIPTS.values():
        assert "--overwrite" in script.__doc__ and "--debug" in script.__doc__
