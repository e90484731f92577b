"""docs/reliability.md: every row of its table names at least one test, and every test it names
exists (file, function and, for parametrized ones, an id of that very function's parametrization)."""

import ast
import os
import re
from typing import List, Optional

from conftest import REPO_ROOT

DOC = os.path.join(REPO_ROOT, "docs", "reliability.md")
TEST_REF = re.compile(r"`(test_\w+\.py)::(test_\w+)(?:\[(\w+)\])?`")


def table_rows():
    text = open(DOC).read()
    table = text[text.index("## The table"):]
    return [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| case")]


def find_test_function(filename: str, function: str) -> Optional[ast.FunctionDef]:
    tree = ast.parse(open(os.path.join(REPO_ROOT, "tests", filename)).read())
    return next((node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == function), None)


def parametrize_ids(function: ast.FunctionDef) -> List[str]:
    """The ids written as a list of strings in the function's own @pytest.mark.parametrize(..., ids=[...])."""
    ids = []
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Call) and ast.unparse(decorator.func) == "pytest.mark.parametrize":
            for keyword in decorator.keywords:
                if keyword.arg == "ids" and isinstance(keyword.value, (ast.List, ast.Tuple)):
                    ids += [element.value for element in keyword.value.elts if isinstance(element, ast.Constant)]
    return ids


def test_every_row_names_existing_tests():
    rows = table_rows()
    assert len(rows) >= 20
    for row in rows:
        refs = TEST_REF.findall(row)
        assert refs, row
        for filename, function, case in refs:
            found = find_test_function(filename, function)
            assert found is not None, (filename, function)
            if case:
                assert case in parametrize_ids(found), (filename, function, case)


def test_an_id_of_another_function_does_not_count():
    """test_stop_and_resume_equal_straight_run's ids are its own; a function without parametrization has none."""
    resume = find_test_function("test_resume_exact.py", "test_stop_and_resume_equal_straight_run")
    assert "in_memory" in parametrize_ids(resume)
    errors = find_test_function("test_tools_e2e.py", "test_train_user_errors_are_one_line")
    assert "in_memory" not in parametrize_ids(errors) and "missing_teacher" in parametrize_ids(errors)
    assert parametrize_ids(find_test_function("test_tools_e2e.py", "test_train_then_eval_on_digits")) == []
