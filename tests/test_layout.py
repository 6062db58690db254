"""The layout rules of gpurnn/ (DESIGN.md): one module per cell, reached only through gpurnn.cells."""
import ast
import pathlib

import pytest

from gpurnn import cells

PACKAGE = pathlib.Path(cells.__file__).resolve().parents[1]
SOURCES = sorted(PACKAGE.rglob("*.py"))
CELL_MODULES = {f"gpurnn.cells.{name}" for name in cells.MODULES}


def _imported_modules(path):
    """The absolute names of the modules a file imports (relative imports resolved)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            names += [module] + [f"{module}.{a.name}" for a in node.names]
    return names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_file_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= 400


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_cell_modules_are_reached_through_gpurnn_cells(path):
    if path.parent.name == "cells":   # the package itself maps names to its modules
        return
    assert not CELL_MODULES & set(_imported_modules(path))


def test_the_engine_names_no_cell():
    text = (PACKAGE / "engine.py").read_text().lower()
    assert [name for name in ("elman", "jordan", "lstm", "gru") if name in text] == []


def test_every_cell_has_its_kernel_module():
    for name, module in cells.MODULES.items():
        assert callable(module.make) and module.WEIGHT_NAMES == cells.WEIGHT_NAMES[name]
        assert cells.kernels(name).__name__ == f"gpurnn.kernels.{name}"
