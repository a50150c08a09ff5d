"""The test suite's own layout: shared helpers live in tests/helpers.py and shared fixtures in tests/conftest.py, so
no test module imports another (one test file can then be run, moved or deleted without breaking the others)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def is_test_module(name: str) -> bool:
    """tests.test_x (or below it), or test_x as a top-level or relative name."""
    parts = name.split(".")
    return parts[0].startswith("test_") or parts[0] == "tests" and len(parts) > 1 and parts[1].startswith("test_")


def imported_test_modules(source: str) -> list[str]:
    """The test modules that the given source imports, in any form (`import`, `from ... import`, relative)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):  # the module, or else each imported name as a possible submodule
            module = node.module or ""
            names = [module] if is_test_module(module) else [f"{module}.{a.name}".lstrip(".") for a in node.names]
        else:
            continue
        found += [name for name in names if is_test_module(name) and name not in found]
    return found


def test_the_checker_sees_every_form_of_import():
    forms = ["from tests.test_train import tiny_params", "import tests.test_train", "import tests.test_train as t",
             "from tests import test_train", "from .test_train import tiny_params", "from . import test_train",
             "import test_train", "from test_train import tiny_params",
             "def f():\n    from tests.test_train import tiny_params"]
    for form in forms:
        assert imported_test_modules(form), form
    allowed = ["from tests.conftest import ROOT", "from tests.helpers import TINY", "from tests import helpers",
               "import tests.helpers", "from .helpers import TINY", "from realmix.train import Trainer",
               "import pytest"]
    for form in allowed:
        assert not imported_test_modules(form), form


def test_no_test_module_imports_another():
    modules = sorted(TESTS.glob("test_*.py"))
    assert Path(__file__).resolve() in modules
    modules += [TESTS / "conftest.py", TESTS / "helpers.py"]  # nor may the shared modules lean on a test module
    offenders = {path.name: found for path in modules if (found := imported_test_modules(path.read_text()))}
    assert not offenders, f"test modules import other test modules (move the helper to tests/helpers.py or a " \
                          f"fixture to tests/conftest.py): {offenders}"
