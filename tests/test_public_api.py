from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import esgp_sparse

PACKAGE = Path(esgp_sparse.__file__).parent


def test_top_level_all():
    assert esgp_sparse.__all__ == ["ESGP", "ESGPCell"]
    from esgp_sparse import ESGP, ESGPCell  # noqa: F401


@pytest.mark.parametrize("module", ["esgp_sparse", "esgp_sparse.init", "esgp_sparse.ops"])
def test_all_is_a_literal_list_of_existing_names(module):
    tree = ast.parse((PACKAGE.parent / (module.replace(".", "/") + "/__init__.py")).read_text())
    assigned = [n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "__all__"]
    assert len(assigned) == 1 and isinstance(assigned[0], ast.List)
    names = [elt.value for elt in assigned[0].elts]
    imported = importlib.import_module(module)
    assert names == sorted(names) or module == "esgp_sparse"
    for name in names:
        assert hasattr(imported, name), name


def test_the_wheel_ships_py_typed(tmp_path):
    """PEP 561: type checkers read the annotations of an installed package only if it has py.typed."""
    root = PACKAGE.parent
    source = tmp_path / "source"
    shutil.copytree(root, source, ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "wheel"), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "wheel").glob("esgp_sparse-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "esgp_sparse/py.typed" in names
    assert "esgp_sparse/cell.py" in names and "esgp_sparse/ops/sparse.py" in names
