"""Console-script plumbing shared by ``otoir-opt`` and ``otoir-demo``: Ctrl-C at any moment ends
the program with exit status 130 and one line on stderr, never a traceback.

Standard library only, so importing it (before the handler exists) is over in a moment.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TextIO

__all__ = ["interrupted", "sigint_handler", "run_console"]


def interrupted(prog: str, stderr: TextIO, written: Sequence[str] | None = ()) -> int:
    """Writes ``<prog>: interrupted; ...`` and returns 130.

    ``written``: the outputs finished so far (the line names the first, or says nothing was
    written); None when the program does not track them (the line says only "interrupted").
    """
    if written is None:
        line = f"{prog}: interrupted"
    else:
        line = f"{prog}: interrupted; " + (f"'{written[0]}' was written" if written else "nothing written")
    try:
        stderr.write(line + "\n")
        stderr.flush()
    except (OSError, ValueError):
        pass
    return 130


def _in_import(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib."):
            return True
        frame = frame.f_back
    return False


def sigint_handler(prog: str, written: Sequence[str] | None) -> Callable:
    """The SIGINT handler: raises KeyboardInterrupt, except while a module imports."""

    def on_sigint(signum, frame) -> None:
        # A second Ctrl-C must not interrupt the cleanup (temporary files) the first one started.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if _in_import(frame):
            # An exception raised while a module imports can cross a native extension's
            # initialiser (onnx's nanobind module creates Python enums there), which aborts the
            # process instead of unwinding. Imports write nothing, so exit now, with the same line.
            interrupted(prog, sys.stderr, written)
            os._exit(130)
        raise KeyboardInterrupt

    return on_sigint


def run_console(main: Callable[[], int], prog: str, written: Sequence[str] | None = None) -> NoReturn:
    """Runs ``main`` as a console script and exits with its status (130 on Ctrl-C, one line).

    ``written``: the list ``main`` appends its finished outputs to (see :func:`interrupted`).
    """
    try:
        signal.signal(signal.SIGINT, sigint_handler(prog, written))
    except (ValueError, OSError):  # not the main thread
        pass
    # interrupted outside main's own handling: main reported what it wrote, nothing more was
    nothing = () if written is not None else None
    try:
        code = main()
    except KeyboardInterrupt:
        code = interrupted(prog, sys.stderr, nothing)
    try:
        sys.stdout.flush()
    except KeyboardInterrupt:
        code = interrupted(prog, sys.stderr, nothing)
    except (OSError, ValueError):  # stdout closed (e.g. piped into head)
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # exiting now: no traceback from interpreter shutdown
    sys.exit(code)
