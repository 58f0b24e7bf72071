"""The package's imports follow ARCHITECTURE.md: the table there is the rule, and this test enforces it."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minimind_edu"


def allowed_imports() -> dict[str, set[str] | None]:
    """Module -> the package modules it may import (None: any), read from ARCHITECTURE.md's table."""
    rows = re.findall(r"^\| `(\w+)` \| .* \| (.+) \|$", (ROOT / "ARCHITECTURE.md").read_text(), re.MULTILINE)
    table: dict[str, set[str] | None] = {}
    for module, imports in rows:
        imports = imports.strip()
        table[module] = None if imports == "any" else set(re.findall(r"`(\w+)`", imports))
    return table


def package_imports(source: str) -> set[str]:
    """The package modules a module's source imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:  # from .x import y / from . import x
            found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minimind_edu."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("minimind_edu."))
    return found


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def test_the_table_lists_every_module_and_nothing_else():
    assert sorted(allowed_imports()) == MODULES


@pytest.mark.parametrize("module", MODULES)
def test_imports_go_the_documented_way(module):
    allowed = allowed_imports()[module]
    imported = package_imports((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    if allowed is not None:
        assert imported <= allowed, f"{module} imports {sorted(imported - allowed)}: not allowed by ARCHITECTURE.md"


def test_the_rules_that_matter_most_are_in_the_table():
    table = allowed_imports()
    assert table["model"] == set()  # the model stands alone
    assert "model" not in table["data"]  # data knows no model
    assert "train" not in table["memory"] and "train" not in table["memory_measure"]  # nor the estimator a trainer
    assert all(mods is None or "cli" not in mods for mods in table.values())  # nothing imports the CLI


def test_the_check_catches_a_wrong_import():
    # The parser sees every spelling of an import, so a violation cannot hide behind a different form.
    source = ("from . import train\nfrom .data import x\nimport minimind_edu.cli\n"
              "def f():\n    from minimind_edu.hf import y\n")
    assert package_imports(source) == {"train", "data", "cli", "hf"}


def test_only_the_command_line_knows_argparse():
    users = [m for m in MODULES if re.search(r"^\s*(import argparse|from argparse)", (PACKAGE / f"{m}.py").read_text(),
                                             re.MULTILINE)]
    assert users == ["cli"]
