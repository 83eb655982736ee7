"""The package's seams: what one package takes from another is public, and the README's map of the tree is true."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import interp

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(interp.__file__).resolve().parent


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, parts


def _owner(parts: list[str]) -> str:
    """The top-level package a module belongs to (``interp.circuits`` for ``interp.circuits.graph._trace``);
    modules directly under ``interp`` belong to ``interp``."""
    return ".".join(parts[:2]) if len(parts) > 2 or (PACKAGE / parts[-1]).is_dir() else "interp"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_packages_take_only_public_names_from_each_other():
    crossings = []
    for path, parts in _modules():
        here = _owner(parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.level or not (node.module or "").startswith("interp"):
                continue
            target = node.module.split(".")
            there = _owner(target) if len(target) > 1 else "interp"
            if there in ("interp", here):  # the root's helpers (interp._io, ...) serve every package
                continue
            names = [a.name for a in node.names]
            if any(_private(p) for p in target) or any(_private(n) for n in names):
                crossings.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import "
                                 f"{', '.join(names)}")
    assert not crossings, ("private names used across packages (give them a public name in the package's "
                           "__init__):\n" + "\n".join(crossings))


def _where_things_are() -> dict[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^- `([^`]+)`\s*[:-]?\s*(.*)$", section, flags=re.M))


def test_readme_map_matches_the_tree():
    listed = _where_things_are()
    assert listed, "README.md has no '## Where things are' list"
    missing = [p for p in listed if not (ROOT / p.rstrip("/")).exists()]
    assert not missing, f"README's 'Where things are' names paths that do not exist: {missing}"
    packages = {f"interp/{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    tops = {f"{p.name}/" for p in ROOT.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name not in ("interp", "build", "dist")
            and not p.name.endswith(".egg-info") and any(p.rglob("*.py")) | any(p.glob("*.ipynb"))}
    unlisted = sorted((packages | tops) - set(listed))
    assert not unlisted, f"README's 'Where things are' leaves out: {unlisted}"
