"""The one base class for errors a user can cause.

Every error that bad input, a bad option, a missing or corrupt file or an incompatible earlier
run can raise derives from ``AdaptomeError``. Command lines catch ``AdaptomeError`` and
``OSError`` (``cli_errors.user_errors``) and print one line naming the file and the problem;
anything else is a programming error and surfaces as a traceback. The more specific classes keep
their old builtin bases (``ValueError``, ``KeyError``) so that library callers catching those
still work.

Not covered: error codes or localisation.
"""

from __future__ import annotations


class AdaptomeError(Exception):
    """Base of every error a user can cause; ``str()`` is the one-line message."""

    def __str__(self) -> str:  # KeyError subclasses would otherwise quote the message
        return str(self.args[0]) if self.args else ""
