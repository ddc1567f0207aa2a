"""The pathology domain's user-error class.

``PathologyError`` is raised for input a user can get wrong (a bad option, a missing or malformed
CSV / GeoJSON / feature file, a stage run out of order); the message names the file and the
problem. ``slide.SlideError`` covers slides that cannot be opened or read. Both derive from
``adaptome.core.errors.AdaptomeError``, which the command line prints as one line (exit 2); any
other exception is a bug and surfaces as a traceback.

Not covered: error codes.
"""

from __future__ import annotations

from adaptome.core.errors import AdaptomeError


class PathologyError(AdaptomeError, ValueError):
    """A bad option or input file of the pathology commands; the message names the file."""
