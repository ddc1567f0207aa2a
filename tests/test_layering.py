"""The layering rule (DESIGN.md, decision 7): core never imports a domain, not even by string, and a
domain never imports another domain.

Checked statically with ``ast`` over every source file: ``import x`` / ``from x import y``
(relative imports resolved against the file's package) anywhere in a module, inside functions
too, and every string constant that names a domain module (``"adaptome.domains..."``), which is
how ``importlib.import_module``, ``importlib.resources.files`` or an entry-point value would reach
one. Docstrings are text, not imports, and are skipped.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOMAIN_RX = re.compile(r"\badaptome\.domains(?:\.([A-Za-z_][A-Za-z0-9_]*))?")


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["adaptome", *parts])


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                ids.add(id(body[0].value))
    return ids


def references(path: Path, root: Path = ROOT) -> list[tuple[int, str, str]]:
    """(line, kind, module or text) for every import and every domain-naming string of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    docs = _docstring_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, "import", a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, "import", target))
            # ``from adaptome.domains import protein`` / ``from . import x``: a name may be a module
            found += [(node.lineno, "import", f"{target}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if DOMAIN_RX.search(node.value):
                found.append((node.lineno, "string", node.value))
    return found


def _domain_of(name: str) -> str | None:
    """The domain a module name or string points into; "" for the bare ``adaptome.domains``."""
    m = DOMAIN_RX.search(name)
    return None if m is None else (m.group(1) or "")


def violations(files: list[Path], own_domain: str | None, root: Path = ROOT) -> list[str]:
    """Layering violations of ``files``: from core (``own_domain`` None) any import of
    ``adaptome.domains...`` and any string naming a module under it (``"adaptome.domains.<x>"``,
    or ``"adaptome.domains."`` completed at run time); from domain ``own_domain`` any import or
    string naming another domain. The bare string ``"adaptome.domains"`` is the plug-in entry-point
    group (``core/plugins.py``), not a module path, and is allowed."""
    bad = []
    for path in files:
        for line, kind, name in references(path, root):
            dom = _domain_of(name)
            if dom is None:
                continue
            if own_domain is None:
                flagged = kind == "import" or bool(dom) or "adaptome.domains." in name
            else:
                flagged = bool(dom) and dom != own_domain
            if flagged:
                bad.append(f"{path.relative_to(root)}:{line}: {kind} {name!r}")
    return bad


def _py(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def test_core_names_no_domain():
    bad = violations(_py(ROOT / "core"), None)
    assert not bad, "core must not import a domain (plug-ins are found through entry points):\n" + "\n".join(bad)


DOMAINS = sorted(p.name for p in (ROOT / "domains").iterdir() if (p / "__init__.py").is_file())


@pytest.mark.parametrize("domain", DOMAINS)
def test_domain_imports_no_other_domain(domain):
    bad = violations(_py(ROOT / "domains" / domain), domain)
    assert not bad, f"domain {domain!r} must not import another domain:\n" + "\n".join(bad)


# --- the checker itself catches what it should -----------------------------------------------------
SAMPLES = {
    "static": "from adaptome.domains.protein import formats\n",
    "plain": "import adaptome.domains.pathology.slide\n",
    "lazy": "def f():\n    from adaptome.domains.protein.cli import app\n    return app\n",
    "by_string": "import importlib\nm = importlib.import_module('adaptome.domains.protein.plugin')\n",
    "resources": "from importlib.resources import files\nx = files('adaptome.domains.protein') / 'data'\n",
    "f_string": "name = 'protein'\nm = __import__(f'adaptome.domains.{name}')\n",
}


@pytest.mark.parametrize("case", sorted(SAMPLES))
def test_checker_flags_core_importing_a_domain(tmp_path, case):
    (tmp_path / "core").mkdir()
    path = tmp_path / "core" / "mod.py"
    path.write_text(SAMPLES[case])
    assert violations([path], None, tmp_path), case


def test_checker_allows_own_domain_core_group_name_and_docstrings(tmp_path):
    src = ('"""Mentions adaptome.domains.pathology in a docstring only."""\n'
           "from adaptome.core.errors import AdaptomeError\n"
           "from adaptome.domains.protein import formats\n"
           "from . import formats as f2\n"
           "GROUP = 'adaptome.domains'\n")
    (tmp_path / "domains" / "protein").mkdir(parents=True)
    path = tmp_path / "domains" / "protein" / "x.py"
    path.write_text(src)
    assert violations([path], "protein", tmp_path) == []
    bad = violations([path], "pathology", tmp_path)
    assert {b.split(":")[1] for b in bad} == {"3", "4"}  # the absolute and the relative import
    (tmp_path / "core").mkdir()
    group = tmp_path / "core" / "plugins.py"
    group.write_text("GROUP = 'adaptome.domains'\n")
    assert violations([group], None, tmp_path) == []
