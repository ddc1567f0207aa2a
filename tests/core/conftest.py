"""Shared fixtures of the core tests."""

import contextlib
import os
import signal

import pytest


@pytest.fixture(scope="module")
def app():
    """``adaptome``'s Typer app with the domain commands added, as the installed command has them."""
    from adaptome.core import cli

    cli._add_domain_apps()
    return cli.app


@pytest.fixture
def ctrl_c_at(monkeypatch):
    """``with ctrl_c_at(n): ...``: inside, ``fit``'s optimizer step ``n`` ends with a SIGINT, as a user's Ctrl-C."""
    from adaptome.core.train import loop

    real_step = loop._train_step

    @contextlib.contextmanager
    def at(step: int):
        def step_then_ctrl_c(run):
            loss = real_step(run)
            if run.state.step == step:
                os.kill(os.getpid(), signal.SIGINT)
            return loss

        with monkeypatch.context() as m:
            m.setattr(loop, "_train_step", step_then_ctrl_c)
            yield

    return at
