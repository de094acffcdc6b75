"""What a command tells the user besides its results: stage lines and warnings.

Both go to stderr, so `--json` output on stdout stays one parseable object. Warnings are Python
warnings of class `FusescopeWarning` (tests can catch them with `pytest.warns`); the command line
prints them as one line, `fusescope: warning: ...`, like its errors.
"""

from __future__ import annotations

import sys
import time
import warnings


class FusescopeWarning(UserWarning):
    """Something the user probably did not mean, but that is not an error."""


def warn(message: str) -> None:
    """Warn about the user's input or data (shown once per message and call site)."""
    warnings.warn(message, FusescopeWarning, stacklevel=2)


_python_format = warnings.formatwarning


def format_warning(message, category, filename, lineno, line=None) -> str:
    """`warnings.formatwarning` for the command line: our warnings as one plain line."""
    if issubclass(category, FusescopeWarning):
        return f"fusescope: warning: {message}\n"
    return _python_format(message, category, filename, lineno, line)


def stage(what: str, enabled: bool = True) -> None:
    """One line saying what a long command does now, with the seconds since it started.

    Args:
        what: the stage, e.g. "Net2Vec probe 3/7: RGB (joint), stage 4".
        enabled: False prints nothing (a `--quiet` flag).
    """
    if enabled:
        elapsed = time.perf_counter() - _START
        print(f"[{elapsed:6.1f} s] {what}", file=sys.stderr, flush=True)


_START = time.perf_counter()  # this module is imported when the command line starts


def progress_bar(*args, **kwargs):
    """A tqdm progress bar that stays when its work completes and is erased when an error
    interrupts it, so the error's one line is the last thing on the terminal (a bar closed by
    the unwinding loop would otherwise be printed, line and all, before it)."""
    from tqdm import tqdm

    class Progress(tqdm):
        def __iter__(self):
            for item in super().__iter__():
                try:
                    yield item
                except GeneratorExit:  # the loop was left early: an error, or a break
                    self.leave = False
                    raise

        def __exit__(self, exc_type, exc_value, traceback):
            if exc_type is not None:
                self.leave = False
            return super().__exit__(exc_type, exc_value, traceback)

    return Progress(*args, **kwargs)
