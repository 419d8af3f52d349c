"""The import layers (README, "Layout"): init uses numpy/scipy only, ops uses torch only, nothing upward."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import esgp_sparse

PACKAGE = Path(esgp_sparse.__file__).parent


def imports(path: Path) -> set[str]:
    """Top-level packages a file imports (relative imports as 'esgp_sparse.<sub>')."""
    found = set()
    sub = path.parent.relative_to(PACKAGE.parent).as_posix().replace("/", ".")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = sub.split(".")[: len(sub.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module)
    return found


@pytest.mark.parametrize(
    "layer, allowed",
    [
        ("init", {"numpy", "scipy"}),
        ("ops", {"torch"}),
    ],
)
def test_layer_imports(layer, allowed):
    for path in (PACKAGE / layer).glob("*.py"):
        for name in imports(path):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if top == "esgp_sparse":
                assert name.startswith(f"esgp_sparse.{layer}"), f"{path.name} imports {name}: upward or sideways"
                continue
            assert top in allowed, f"{path.name} imports {name}; {layer}/ may use {sorted(allowed)} only"
