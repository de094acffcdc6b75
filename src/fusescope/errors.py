"""The one exception type users see.

Anything raised as `FusescopeError` is a problem with the user's input (a file, a key, a value):
the command line prints its message and exits with status 2, without a traceback. Everything else
is a bug in fusescope and keeps its traceback.
"""


class FusescopeError(Exception):
    """A clear, user-facing error: the message names the file, key or value at fault."""


class OptionError(ValueError):
    """A model or decoder builder rejects an option value (or its combination with the data or
    backbone). `build_model` turns it, and only it, into a `FusescopeError` naming the method:
    any other exception raised while building a model is a bug and keeps its traceback."""
