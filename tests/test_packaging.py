"""Every package folder is listed in pyproject.toml under its ``adaptome.`` import name, and every
listed package has a folder (a missing entry would be left out of a non-editable install)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _package_dirs() -> dict[str, str]:
    return _pyproject()["tool"]["setuptools"]["package-dir"]


def _folder_packages() -> set[str]:
    found = set()
    for name, folder in _package_dirs().items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            found.add(".".join([name, *rel.parts]))
    return found


def test_package_dir_maps_core_and_domains():
    assert _package_dirs() == {"adaptome.core": "core", "adaptome.domains": "domains"}


def test_every_package_folder_is_listed():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    missing = sorted(_folder_packages() - listed)
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_every_listed_package_has_a_folder():
    dirs = _package_dirs()
    orphans = []
    for pkg in _pyproject()["tool"]["setuptools"]["packages"]:
        root = max((r for r in dirs if pkg == r or pkg.startswith(r + ".")), key=len, default=None)
        assert root is not None, f"{pkg} is under no package-dir entry"
        folder = ROOT / dirs[root] / Path(*pkg[len(root):].lstrip(".").split(".")) if pkg != root else ROOT / dirs[root]
        if not (folder / "__init__.py").is_file():
            orphans.append(f"{pkg} -> {folder.relative_to(ROOT)}")
    assert not orphans, f"listed in pyproject.toml but no package folder: {orphans}"


def test_domains_present():
    for name in ("protein", "pathology", "multilingual", "codegen"):
        assert f"adaptome.domains.{name}" in _folder_packages()
