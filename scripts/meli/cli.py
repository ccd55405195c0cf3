"""The command-line convention every ``python -m meli.<stage>.<module>`` follows.

A module raises :class:`MeliError` (or a subclass: ``RunError``, ``FetchError``, ...) for a
problem the user can fix: bad input, a missing file, a bad config value. The message names
the file/key and what to do. :func:`entry_point` turns it into one ``prog: error: message``
line on stderr and an exit code, with no traceback; anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable


class MeliError(Exception):
    """A problem the user can fix; reported without a traceback."""

    exit_code = 1


def entry_point(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a module's ``main(argv=None, ...) -> int``: a MeliError becomes a message + exit code."""
    prog = main.__module__ if main.__module__ != "__main__" else sys.argv[0]

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None, *args: Any, **kwargs: Any) -> int:
        try:
            return main(argv, *args, **kwargs) or 0
        except MeliError as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            return err.exit_code

    return wrapped
