"""`python -m bard_jax.demo`: the round trip it prints, nothing left in the temporary directory, and a --workdir
holding a user's files is left alone."""

from __future__ import annotations

import os
import tempfile

import pytest

from bard_jax import demo
from bard_jax.hf import CheckpointError


def test_the_demo_round_trips_and_leaves_no_temporary_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert demo.main([]) == 0
    out = capsys.readouterr().out
    assert "bitwise identical: True; config equivalent: True" in out and "now removed" in out
    # torch (the tests' writer of the HF checkpoint) may leave its compile cache there; the demo leaves nothing.
    assert [n for n in os.listdir(tmp_path) if n.startswith("bard_demo_")] == []


def test_a_workdir_holding_other_files_is_left_alone(tmp_path):
    (tmp_path / "converted").mkdir()
    (tmp_path / "converted" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=r"converted is not empty .*notes\.txt.*the demo does not replace it"):
        demo.main(["--workdir", str(tmp_path)])
    assert (tmp_path / "converted" / "notes.txt").read_text() == "mine" and os.listdir(tmp_path) == ["converted"]
    # Its own earlier outputs are replaced on a rerun.
    other = tmp_path / "again"
    assert demo.main(["--workdir", str(other)]) == 0
    assert demo.main(["--workdir", str(other)]) == 0
