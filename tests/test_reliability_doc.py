"""docs/reliability.md: every row of its table names at least one test, and every test it names
exists (file, function and, for parametrized ones, the id)."""

import os
import re

from conftest import REPO_ROOT

DOC = os.path.join(REPO_ROOT, "docs", "reliability.md")
TEST_REF = re.compile(r"`(test_\w+\.py)::(test_\w+)(?:\[(\w+)\])?`")


def table_rows():
    text = open(DOC).read()
    table = text[text.index("## The table"):]
    return [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| case")]


def test_every_row_names_existing_tests():
    rows = table_rows()
    assert len(rows) >= 20
    for row in rows:
        refs = TEST_REF.findall(row)
        assert refs, row
        for filename, function, case in refs:
            source = open(os.path.join(REPO_ROOT, "tests", filename)).read()
            assert f"def {function}(" in source, (filename, function)
            if case:
                assert f'"{case}"' in source, (filename, function, case)
