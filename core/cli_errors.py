"""One way for every command to report an error a user caused: one red line, exit status 2.

``with user_errors(): ...`` turns ``AdaptomeError`` and ``OSError`` (a missing file, a full disk,
permission denied) into ``error: <message>`` on stderr and exit code 2. Nothing broader is caught:
a ``KeyError`` or ``TypeError`` is a programming error and surfaces as a traceback.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, NoReturn

import typer

from adaptome.core.errors import AdaptomeError


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` in red on stderr and exit with ``code``."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _os_message(e: OSError) -> str:
    if e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Report ``AdaptomeError`` and ``OSError`` as one line (exit 2); let anything else through."""
    try:
        yield
    except AdaptomeError as e:
        fail(str(e))
    except OSError as e:
        fail(_os_message(e))
