"""The family sweep (tests/family_sweep.py): every timm family with ``forward_intermediates``, as
student and as teacher of KD, FITNET, SFAKD, FREEKD (its stage 1 run), OFA and SPECTRALKD, works
or refuses in one line; docs/heterogeneous.md's family table is what the sweep produces.

The quick form runs FAST (a few cases, a few seconds); the whole sweep (264 cases, about 1.5 min
on 2 CPU cores) is marked slow.
"""

import re

import pytest

from tests.family_sweep import BEGIN, DOC, END, FAMILIES, FAST, METHODS, ROLES, cases, run_sweep, table

# Refusals that stay: the pair cannot take the method, and the line says what to change.
REFUSALS = {
    ("LeViT", "student", "OFA"): "OFA needs four student stages; this student gives 3 feature maps",
    ("LeViT", "student", "SPECTRALKD"): "timm:levit_128s gives 3 feature maps, so use indices from -3 to 2",
    ("LeViT", "teacher", "SPECTRALKD"): "timm:levit_128s gives 3 feature maps, so use indices from -3 to 2",
    ("EfficientNet", "teacher", "SFAKD"): "which takes 256: set SFAKD.TEACHER_CLASSIFIER False",
}


def check_outcome(case, outcome: str) -> None:
    """Works, or the refusal this file expects for the case, in one line."""
    assert not outcome.startswith("error"), f"{case}: {outcome}"
    if case in REFUSALS:
        assert outcome.startswith("refuses: ") and REFUSALS[case] in outcome, f"{case}: {outcome}"
    else:
        assert outcome == "works", f"{case}: {outcome}"


@pytest.mark.parametrize("case", FAST, ids=["-".join(case) for case in FAST])
def test_fast_cases(case, tmp_path):
    check_outcome(case, run_sweep([case], str(tmp_path))[case])


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    return run_sweep(workdir=str(tmp_path_factory.mktemp("sweep")))


@pytest.mark.slow
def test_every_family_works_or_refuses_in_one_line(outcomes):
    assert sorted(outcomes) == sorted(cases())
    assert len(FAMILIES) * len(ROLES) * len(METHODS) == len(outcomes)
    problems = []
    for case, outcome in outcomes.items():
        try:
            check_outcome(case, outcome)
        except AssertionError as err:
            problems.append(str(err))
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_doc_table_is_what_the_sweep_produces(outcomes):
    text = open(DOC, encoding="utf-8").read()
    found = re.search(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), text, re.S)
    assert found, f"docs/heterogeneous.md has no {BEGIN} ... {END} block"
    assert found.group(1) == table(outcomes), "regenerate it: python tests/family_sweep.py --write-doc"
