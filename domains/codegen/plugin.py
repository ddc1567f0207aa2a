"""The codegen domain's plug-in: its command-line sub-app and its quickstart part (see core/plugins.py)."""

from __future__ import annotations

from pathlib import Path

from adaptome.core.plugins import DomainPlugin


def _cli():
    from adaptome.domains.codegen.cli import app

    return app


def _quickstart(out_dir: Path) -> dict:
    from adaptome.domains.codegen.quickstart import run

    return run(out_dir)


plugin = DomainPlugin(name="codegen", help="Low-resource code generation (R, Racket): sandboxed execution, pass@k, "
                      "PLANSEARCH, adapter training.", cli=_cli, quickstart=_quickstart, order=40)
