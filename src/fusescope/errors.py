"""The one exception type users see.

Anything raised as `FusescopeError` is a problem with the user's input (a file, a key, a value):
the command line prints its message and exits with status 2, without a traceback. Everything else
is a bug in fusescope and keeps its traceback.
"""


class FusescopeError(Exception):
    """A clear, user-facing error: the message names the file, key or value at fault."""
