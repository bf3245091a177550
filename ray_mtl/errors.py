"""User-facing errors and the CLI wrapper that turns them into one line and a non-zero exit.

A ``UserError`` is a problem with what the user gave us (a file, a field, a value); it is printed
as ``error: <message>`` without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input: the message names the file/field, what was found and what was expected."""


EXIT_USER_ERROR = 2


def cli(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI ``main``: UserError -> ``error: ...`` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
