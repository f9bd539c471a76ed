"""Telling the user's code from stepwell's: for tracebacks people read and for the watchdog.

"User code" is any file outside stepwell's package, the standard library and the installed
packages (site-packages). A traceback of a failed step then starts at the user's own frame
instead of stepwell's session machinery, and the watchdog names the user's function.
"""

from __future__ import annotations

import os
import sysconfig
import traceback

_INTERNAL = tuple(
    os.path.normcase(os.path.realpath(path)) + os.sep
    for path in {os.path.dirname(os.path.dirname(__file__)), sysconfig.get_paths()["stdlib"],
                 sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})


def is_user_code(filename: str) -> bool:
    if filename.startswith("<"):          # <frozen ...>, <string>: not the user's file
        return False
    path = os.path.normcase(os.path.realpath(filename))
    return not path.startswith(_INTERNAL)


def user_traceback(exc: BaseException) -> str:
    """The traceback of `exc` from the first frame of user code on (chained exceptions
    included); the whole traceback when no frame is the user's (a bug in stepwell itself, or
    an error raised inside a library), so nothing useful is ever cut."""
    frames = traceback.extract_tb(exc.__traceback__)
    first = next((i for i, frame in enumerate(frames) if is_user_code(frame.filename)), None)
    if first is None or first == 0:
        return "".join(traceback.format_exception(exc))
    trimmed = traceback.TracebackException.from_exception(exc)
    trimmed.stack = traceback.StackSummary.from_list(list(frames)[first:])
    return "".join(trimmed.format())
