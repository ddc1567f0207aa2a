"""Shared fixtures of the core tests."""

import pytest


@pytest.fixture(scope="module")
def app():
    """``adaptome``'s Typer app with the domain commands added, as the installed command has them."""
    from adaptome.core import cli

    cli._add_domain_apps()
    return cli.app
