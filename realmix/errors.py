"""The one error type users see: a single line that names the input and says what to do."""

from __future__ import annotations


class RealmixError(Exception):
    """A problem with the user's input, params or environment (not a bug in realmix).

    Stage scripts and the CLI print it as one `error: ...` line and exit non-zero.
    """
