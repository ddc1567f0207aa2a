"""The protein domain's plug-in: its command-line sub-app and its quickstart part (see core/plugins.py)."""

from __future__ import annotations

from pathlib import Path

from adaptome.core.plugins import DomainPlugin


def _cli():
    from adaptome.domains.protein.cli import app

    return app


def _quickstart(out_dir: Path) -> dict:
    from adaptome.domains.protein.quickstart import run

    return run(out_dir)


plugin = DomainPlugin(name="protein",
                      help="ProLLaMA-style protein LM tuning, sampling, classification, mutation scoring.",
                      cli=_cli, quickstart=_quickstart, order=10)
