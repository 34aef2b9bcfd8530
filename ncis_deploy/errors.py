"""Two kinds of failure, kept apart on purpose (Polygraphy does the same).

``UserError`` is something the person running ncis-deploy can fix: a missing folder, a corrupt weights file,
a config with a typo. The CLI prints its message on one line and exits with code 2, without a traceback.
Anything else escaping the library is a bug in ncis-deploy and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, files or environment; the message says what is wrong and how to fix it."""

    exit_code = 2


def missing_package(package: str, extra: str | None = None) -> UserError:
    """The one message for an optional dependency that is not installed."""
    hint = f"pip install 'ncis-deploy[{extra}]'" if extra else f"pip install {package}"
    return UserError(f"the optional package '{package}' is not installed; install it with: {hint}")
