"""SIGTERM and SIGHUP stop a command the way Ctrl-C does: cleanup runs, one line is printed.

Python dies silently on SIGTERM (a batch scheduler's cancel, `kill`, `timeout`) and SIGHUP (a
closed terminal): no `finally` blocks, so work folders stay behind, and no word on stderr.
Raised as an exception in the main thread instead, they unwind like KeyboardInterrupt: atomic
writes drop their temporaries, locks are released, the last checkpoint stays as it was, and
the CLI says what stopped it and how to continue.
"""

from __future__ import annotations

import signal
from types import FrameType

__all__ = ["Terminated", "exit_code", "signal_name", "stop_on_termination"]


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM or SIGHUP; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_on_termination() -> None:
    """Turn SIGTERM and SIGHUP into `Terminated` (main thread only; handlers someone else
    installed are kept)."""
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is None:  # pragma: no cover - Windows has no SIGHUP
            continue
        try:
            if signal.getsignal(signum) in (signal.SIG_DFL, None):
                signal.signal(signum, _raise)
        except ValueError:  # not the main thread: leave the defaults
            return


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal number, as a shell reports a process killed by it (130 for Ctrl-C)."""
    return 128 + (exc.signum if isinstance(exc, Terminated) else signal.SIGINT)


def signal_name(exc: KeyboardInterrupt) -> str:
    """'SIGTERM', 'SIGHUP', or 'Ctrl-C' for a plain KeyboardInterrupt."""
    return signal.Signals(exc.signum).name if isinstance(exc, Terminated) else "Ctrl-C"


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)
