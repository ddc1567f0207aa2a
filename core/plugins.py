"""Domain plug-ins, discovered through Python entry points; core names no domain.

A domain (ours or a third party's) declares an entry point in the group ``adaptome.domains``
whose value is a module holding a ``DomainPlugin`` named ``plugin``::

    [project.entry-points."adaptome.domains"]
    protein = "adaptome.domains.protein.plugin"

``adaptome`` then mounts ``plugin.cli()`` as ``adaptome <name> ...`` and runs
``plugin.quickstart(out_dir)`` inside ``adaptome quickstart``. Both are loaded lazily:
discovering the plug-ins imports only the small ``plugin`` modules, never a domain's heavy
dependencies.

Not covered: version constraints between a plug-in and core, or ordering beyond ``order``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

GROUP = "adaptome.domains"


@dataclass(frozen=True)
class DomainPlugin:
    """What a domain gives the core.

    Args:
        name: the sub-command name (``adaptome <name>``).
        help: one line for ``adaptome --help``.
        cli: returns the domain's typer app (imported when called).
        quickstart: ``quickstart(out_dir) -> dict`` (the summary it adds to ``summary.json``),
            or None for a domain without a quickstart part.
        order: position in the quickstart (lower first).
    """

    name: str
    help: str
    cli: Callable[[], Any]
    quickstart: Callable[[Path], dict] | None = None
    order: int = 100


def discover() -> list[DomainPlugin]:
    """Every installed domain plug-in, sorted by ``order`` then name."""
    found: dict[str, DomainPlugin] = {}
    for ep in entry_points(group=GROUP):
        plugin = getattr(ep.load(), "plugin", None)
        if not isinstance(plugin, DomainPlugin):
            raise TypeError(f"entry point {ep.name} = {ep.value}: the module has no DomainPlugin named 'plugin'")
        if plugin.name in found:
            continue  # the same distribution seen twice on sys.path
        found[plugin.name] = plugin
    return sorted(found.values(), key=lambda p: (p.order, p.name))
