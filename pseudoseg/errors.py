"""Errors that are the user's to fix.

Anything raised as :class:`UserError` is reported by the command line as one
line on stderr with exit code 2 and no traceback. Library code raises it for
bad input (missing folders, corrupt files, wrong configuration keys); every
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, configuration or files."""
