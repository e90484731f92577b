"""tools/quickstart.py's own logic: it deletes only what it wrote under --out, and its verdict
"beats the student alone by more than the spread". The whole tool runs in test_tools_e2e.py."""

import json
import os
import statistics
import sys

import pytest

from conftest import REPO_ROOT
from mdistiller.errors import OutputDirError
from mdistiller.experiments.runs import Summary

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import quickstart  # noqa: E402


def test_a_second_call_deletes_exactly_what_the_first_wrote(tmp_path):
    out = tmp_path / "output"
    (out / "my_run").mkdir(parents=True)
    (out / "my_run" / "latest").write_text("a user's own run")
    (out / "notes.txt").write_text("keep me")
    first = ["teacher", "KD_seed0", "results.md"]
    quickstart.remove_previous_outputs(str(out), first)
    assert json.loads((out / quickstart.MANIFEST).read_text()) == first
    (out / "teacher").mkdir()
    (out / "teacher" / "latest").write_text("old")
    (out / "KD_seed0").mkdir()
    (out / "results.md").write_text("old table")

    second = ["teacher", "DKD_seed0", "results.md"]
    quickstart.remove_previous_outputs(str(out), second)
    assert sorted(os.listdir(out)) == sorted(["my_run", "notes.txt", quickstart.MANIFEST])
    assert (out / "my_run" / "latest").read_text() == "a user's own run" and (out / "notes.txt").read_text() == "keep me"
    assert json.loads((out / quickstart.MANIFEST).read_text()) == second


def test_a_name_it_did_not_write_is_never_overwritten(tmp_path):
    out = tmp_path / "output"
    (out / "teacher").mkdir(parents=True)
    (out / "teacher" / "latest").write_text("someone else's teacher")
    with pytest.raises(OutputDirError, match="teacher exists and was not written by the quick start"):
        quickstart.remove_previous_outputs(str(out), ["teacher", "results.md"])
    assert (out / "teacher" / "latest").read_text() == "someone else's teacher"
    assert not (out / quickstart.MANIFEST).exists()


def test_a_manifest_naming_a_path_outside_out_is_refused(tmp_path):
    out = tmp_path / "output"
    out.mkdir()
    (tmp_path / "precious").write_text("x")
    (out / quickstart.MANIFEST).write_text(json.dumps(["../precious"]))
    with pytest.raises(OutputDirError, match="not a name in"):
        quickstart.remove_previous_outputs(str(out), ["teacher"])
    assert (tmp_path / "precious").read_text() == "x"


@pytest.mark.parametrize("method, alone, expected", [
    ([96.0, 97.0, 98.0], [90.0, 91.0, 92.0], True),    # +6 against a spread of 1 + 1
    ([91.0, 95.0, 99.0], [90.0, 91.0, 92.0], False),   # +4 against 4 + 1: within the spread
    ([95.0], [90.0], False),                           # one seed: no spread, no verdict
])
def test_beats_alone_compares_the_gain_with_both_spreads(method, alone, expected):
    gain = statistics.mean(method) - statistics.mean(alone)
    if len(method) > 1:
        assert (gain > statistics.stdev(method) + statistics.stdev(alone)) == expected
    assert quickstart.beats_alone(Summary(method), Summary(alone)) == expected
