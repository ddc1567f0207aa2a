"""The multilingual domain's plug-in: its command-line sub-app and its quickstart part (see core/plugins.py)."""

from __future__ import annotations

from pathlib import Path

from adaptome.core.plugins import DomainPlugin


def _cli():
    from adaptome.domains.multilingual.cli import app

    return app


def _quickstart(out_dir: Path) -> dict:
    from adaptome.domains.multilingual.quickstart import run

    return run(out_dir)


plugin = DomainPlugin(name="multilingual", help="Language and task adapters for low-resource languages.",
                      cli=_cli, quickstart=_quickstart, order=30)
