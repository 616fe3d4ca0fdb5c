"""The README against the tree it describes: its architecture section names every module of the package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "sdedit"


def section(text: str, title: str) -> str:
    """The body of the README's level-2 section `## title`, up to the next level-2 heading."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end >= 0 else len(text)]


def is_package_marker(path: Path) -> bool:
    """A folder's __init__.py that holds nothing but its docstring."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and path.parent != PACKAGE and all(
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def test_the_architecture_section_names_every_module():
    named = set(re.findall(r"`([\w/]+\.py)`", section((ROOT / "README.md").read_text(), "Architecture")))
    modules = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if not is_package_marker(p)}
    assert len(modules) > 40 and "files.py" in modules  # the walk found the package
    assert sorted(modules - named) == []
    folders = {d.name for d in PACKAGE.iterdir() if d.is_dir()}
    gone = [n for n in named if n.split("/")[0] in folders and not (PACKAGE / n).is_file()]
    assert gone == []  # no module that is no longer there
